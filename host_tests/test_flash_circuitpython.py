"""tools/flash.py's CircuitPython steps: what CircuitPython would run instead of main.py is removed
(over real mpremote to the virtual board), a drive still read-only to code is refused with the fix,
and the reset after flashing is a hard one (CircuitPython runs boot.py only after a hard reset)."""

import flash  # tools/flash.py (conftest puts tools/ on the path)
import pytest
from vboard import Board

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def board(tmp_path):
    b = Board(tmp_path)
    yield b
    b.stop()


def test_start_up_files_that_shadow_main_py_are_removed(board):
    board.mpremote("exec", "for n in ('code.py', 'code.txt', 'main.py'):\n f = open(n, 'w'); f.write('x = 1'); f.close()")
    dev = flash.Device(board.port)
    try:
        dev.enter()
        assert sorted(flash.remove_shadowing(dev)) == ["code.py", "code.txt"]
        assert flash.remove_shadowing(dev) == []  # nothing left to remove: a re-flash says nothing
    finally:
        dev.reset_to_main()
        dev.close()
    listing = board.mpremote("fs", "ls").stdout
    assert "code.py" not in listing and "code.txt" not in listing and "main.py" in listing


class _FakeTransport:
    def __init__(self):
        self.sent = []

    def exec_raw_no_follow(self, command):
        self.sent.append(command)


class _FakeDevice(flash.Device):
    # The real Device's methods over a stand-in transport (no CircuitPython board here).
    def __init__(self, answer=""):
        self.t = _FakeTransport()
        self._answer = answer

    def exec(self, code):
        self.t.sent.append(code)
        return self._answer.encode()


def test_a_drive_read_only_to_code_is_refused_with_the_fix():
    dev = _FakeDevice("True\n")
    with pytest.raises(flash.FlashError) as err:
        flash.check_cpy_writable(dev)
    assert err.value.code == 9
    assert "Copy firmware/boot.py onto the CIRCUITPY drive" in str(err.value)
    assert "storage.getmount('/').readonly" in dev.t.sent[0]
    flash.check_cpy_writable(_FakeDevice("False\n"))  # writable (boot.py ran): no complaint


def test_circuitpython_reset_is_microcontroller_reset():
    dev = _FakeDevice()
    dev.hard_reset()
    assert dev.t.sent == ["import microcontroller\nmicrocontroller.reset()"]
