"""tools/flash.py's CircuitPython steps: what CircuitPython would run instead of main.py is removed
(over real mpremote to the virtual board), a drive still read-only to code is refused with the fix,
and the reset after flashing is a hard one (CircuitPython runs boot.py only after a hard reset)."""

import pytest
from cgdev import flash
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


class _MemoryBoard(flash.Device):
    """A CircuitPython board as flash.py sees it, in memory: its files, and what was asked of it."""

    def __init__(self, port, baud=115200):
        self.port = port
        self.calls = []
        self.t = _FakeTransport()

    fs: dict = {}  # the test sets the board's files (class-wide: flash.py opens several Devices)
    log: list = []

    def enter(self, timeout=5, soft_reset=True):
        self.log.append("enter")

    def runtime_info(self):
        return {"name": "circuitpython", "version": (9, 2, 1), "machine": "Adafruit Feather RP2040 with rp2040"}

    def eval_repr(self, code):
        if "getmount" in code:
            return False  # boot.py has run: writable by code
        if "os.remove" in code:
            gone = [p for p in flash.CPY_SHADOWS_MAIN if self.fs.pop(p, None) is not None]
            return gone
        raise AssertionError(code)

    def hashes(self, paths):
        import hashlib

        return {p: hashlib.sha256(self.fs[p]).hexdigest() if p in self.fs else None for p in paths}

    def tree(self, top):
        return [p for p in self.fs if p.startswith(top + "/")]

    def mkdirs(self, dirs):
        pass

    def write(self, path, data, progress=None):
        self.fs[path] = data

    def remove(self, path):
        del self.fs[path]

    def read_text(self, path):
        return self.fs[path].decode() if path in self.fs else None

    def exec(self, code):
        raise AssertionError("no slot state on CircuitPython: " + code)

    def reset_to_main(self):
        self.log.append("soft reset")

    def hard_reset(self):
        self.log.append("hard reset")

    def close(self):
        pass


@pytest.mark.timeout(120)
def test_production_flash_of_a_circuitpython_board_removes_code_py_and_hard_resets(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(flash, "Device", _MemoryBoard)
    # A board as CircuitPython ships it (its code.py), after cellguard's boot.py made it writable.
    monkeypatch.setattr(_MemoryBoard, "fs", {"code.py": b"print('Hello World!')\n", "boot.py": b"# cellguard's\n"})
    monkeypatch.setattr(_MemoryBoard, "log", [])
    code = flash.main(["--board", "feather-rp2040-nrf9160", "--port", "/dev/ttyACM9", "--production",
                       "--trust-signing-key", "--no-provision", "--signing-key", str(tmp_path / "dev.pem"),
                       "--service-key", str(tmp_path / "master.key")])
    out = capsys.readouterr().out
    assert code == 0, out
    fs = _MemoryBoard.fs
    assert "code.py" not in fs and "main.py" in fs and "manifest.img" in fs
    assert "removed code.py (CircuitPython would run it instead of main.py)" in out
    assert _MemoryBoard.log[-1] == "hard reset" and "soft reset" not in _MemoryBoard.log
    assert "hard reset (microcontroller.reset())" in out and "the console is on the USB data CDC now" in out
