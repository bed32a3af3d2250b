"""The virtual board's event loop never blocks on a readiness event another handler already used up.

One select() returns the VM's output and its DONE together when a command prints more than one read
takes (the repr of every file hash `cellguard flash` asks for). If DONE is handled first, it drains
the output (so that the prompt follows it); the output's event is then stale. A blocking read on it
waited for output that an idle VM never sends: the board answered nothing more (mpremote: "could
not enter raw repl" at the next command, one re-flash in a few full test runs). Here the selector
hands DONE first, every time, so the race is not left to the scheduler.
"""

import selectors
import threading
import time

import pytest
import serial
from cgsim.virtual_board import MICROPYTHON, VirtualBoard

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not MICROPYTHON.exists(), reason="no MicroPython unix port (make venv)"),
]


class DoneFirst:
    """A selector that returns the VM's output event only together with its DONE, DONE first."""

    def __init__(self, sel: selectors.BaseSelector):
        self._sel = sel

    def __getattr__(self, name):
        return getattr(self._sel, name)

    def select(self, timeout=None):
        events = self._sel.select(timeout)
        if any(key.data == "out" for key, _ in events):
            deadline = time.monotonic() + 10
            while not any(key.data == "ctl" for key, _ in events) and time.monotonic() < deadline:
                events = self._sel.select(0.05)  # until the command's DONE is ready too
        return sorted(events, key=lambda e: e[0].data != "ctl")


@pytest.fixture
def board(tmp_path):
    vb = VirtualBoard(tmp_path / "flash.img")
    vb.sel = DoneFirst(vb.sel)
    loop = threading.Thread(target=vb.serve, daemon=True)
    loop.start()
    yield vb
    vb.stop()
    if vb.child is not None:
        vb.child.kill()  # a loop blocked on the VM's output returns (EOF) and sees the stop
    loop.join(10)
    assert not loop.is_alive(), "the virtual board's loop did not stop"
    vb.close()


def raw_exec(port: serial.Serial, code: bytes) -> bytes:
    port.write(code + b"\x04")
    return port.read_until(b"\x04>")


def test_the_board_answers_after_a_command_whose_output_and_done_arrive_together(board):
    with serial.Serial(board.port, timeout=20) as s:  # the timeout bounds a hang; answers come at once
        assert s.read_until(b">>> ").endswith(b">>> "), "the board did not start"
        s.write(b"\r\x01")
        assert s.read_until(b"raw REPL; CTRL-B to exit\r\n>").endswith(b">")
        out = raw_exec(s, b"print('h' * 9000)")  # more than one 4 KiB read of the VM's stdout
        assert out.startswith(b"OK" + b"h" * 9000) and out.endswith(b"\x04\x04>"), out[-80:]
        out = raw_exec(s, b"print(2 + 2)")
        assert out == b"OK4\r\n\x04\x04>", f"the board stopped answering after a large output: {out!r}"
