"""The virtual board's event loop never blocks on a readiness event another handler already used up.

One select() returns the VM's output and its DONE together when a command prints more than one read
takes (the repr of every file hash `cellguard flash` asks for). If DONE is handled first, it drains
the output (so that the prompt follows it); the output's event is then stale. A blocking read on it
waited for output that an idle VM never sends: the board answered nothing more (mpremote: "could
not enter raw repl" at the next command, one re-flash in a few full test runs). Here the selector
hands DONE first, every time, so the race is not left to the scheduler.

And a Ctrl-C that reaches the VM after its command ended is ignored, as at a board's idle REPL. The
front end turns Ctrl-C into SIGINT while a command runs, and "running" lasts until it has handled the
command's DONE. A VM that had already sent DONE was waiting for its next command: KeyboardInterrupt
was raised in the device script itself, outside the user's code, and the VM died. The board reset to
the friendly REPL and ran main.py, and the bytes held after the Ctrl-C (mpremote's "\r\x01") went
with the old VM: mpremote waits for the raw REPL's banner with a blocking read on a pty, and nothing
ever came (`mpremote fs cp` killed by the test's 120 s timeout on a loaded machine, where the board
reads DONE late). There the selector hands the Ctrl-C to the board before the DONE it already has.
"""

import contextlib
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


class Reordering:
    """A selector that hands the board its events in an order a loaded machine may produce."""

    def __init__(self, sel: selectors.BaseSelector):
        self._sel = sel

    def __getattr__(self, name):
        return getattr(self._sel, name)


class DoneFirst(Reordering):
    """The VM's output event only together with its DONE, DONE first."""

    def select(self, timeout=None):
        events = self._sel.select(timeout)
        if any(key.data == "out" for key, _ in events):
            deadline = time.monotonic() + 10
            while not any(key.data == "ctl" for key, _ in events) and time.monotonic() < deadline:
                events = self._sel.select(0.05)  # until the command's DONE is ready too
        return sorted(events, key=lambda e: e[0].data != "ctl")


class CtrlCBeforeDone(Reordering):
    """Once armed: a DONE waits until input arrives from the port too, and the input is handled first."""

    armed = False

    def select(self, timeout=None):
        events = self._sel.select(timeout)
        if self.armed and any(key.data == "ctl" for key, _ in events):
            deadline = time.monotonic() + 10
            while not any(key.data == "pty" for key, _ in events) and time.monotonic() < deadline:
                events = self._sel.select(0.05)
            self.armed = False
            return sorted(events, key=lambda e: e[0].data != "pty")
        return events


@pytest.fixture
def board(tmp_path):
    with serving(tmp_path, DoneFirst) as vb:
        yield vb


@pytest.fixture
def late_ctrl_c_board(tmp_path):
    with serving(tmp_path, CtrlCBeforeDone) as vb:
        yield vb


@contextlib.contextmanager
def serving(tmp_path, order):
    vb = VirtualBoard(tmp_path / "flash.img")
    vb.sel = order(vb.sel)
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


def test_a_ctrl_c_after_the_command_ended_leaves_the_raw_repl_answering(late_ctrl_c_board):
    with serial.Serial(late_ctrl_c_board.port, timeout=20) as s:  # the timeout bounds a hang
        assert s.read_until(b">>> ").endswith(b">>> "), "the board did not start"
        s.write(b"\r\x01")
        assert s.read_until(b"raw REPL; CTRL-B to exit\r\n>").endswith(b">")
        late_ctrl_c_board.sel.armed = True
        s.write(b"x = 1\x04")
        time.sleep(0.5)  # the VM has sent DONE and waits for its next command
        s.write(b"\x03")  # as mpremote's enter_raw_repl starts
        assert s.read_until(b"\x04>") == b"OK\x04\x04>"
        out = raw_exec(s, b"print(x + 3)")
        assert out == b"OK4\r\n\x04\x04>", f"the board stopped answering after a late Ctrl-C: {out!r}"


# ---- the VM itself, frozen while the front end's command and Ctrl-C reach it -------------------------
class _Vm:
    """vboard_device.py on MicroPython with the pipes the front end gives it (virtual_board._spawn)."""

    def __init__(self, tmp_path):
        import os
        import subprocess

        from cgsim.virtual_board import DEVICE_SCRIPT

        cmd_r, self.cmd_w = os.pipe()
        self.ctl_r, ctl_w = os.pipe()
        env = {**os.environ, "MICROPYPATH": ".frozen", "CELLGUARD_FS": "/", "CELLGUARD_BOARD": "virtual"}
        args = [str(tmp_path / "flash.img"), "4096", "64", str(cmd_r), str(ctl_w)]
        self.proc = subprocess.Popen([str(MICROPYTHON), "-X", "heapsize=1M", str(DEVICE_SCRIPT), *args],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     pass_fds=(cmd_r, ctl_w), env=env)
        os.close(cmd_r)
        os.close(ctl_w)
        self.ctl = os.fdopen(self.ctl_r, "rb")
        assert self.ctl.readline().startswith(b"READY")
        self.send(b"BOOT", b"")  # no boot.py on a fresh flash: the VM then waits for its next command
        assert self.done() == b""

    def send(self, kind: bytes, payload: bytes) -> None:
        import os

        os.write(self.cmd_w, kind + b" %d\n" % len(payload) + payload)

    def done(self) -> bytes:
        return self.ctl.read(int(self.wait(b"DONE")[1]))

    def wait(self, kind: bytes) -> list[bytes]:
        while True:
            head = self.ctl.readline().split()
            assert head, "the VM died: " + self.proc.stdout.read().decode(errors="replace")
            if head[0] == kind:
                return head

    def interrupt_while_idle(self, before_continue=None) -> None:
        import signal

        self.proc.send_signal(signal.SIGSTOP)  # frozen in its wait for the next command
        if before_continue is not None:
            before_continue()
        self.proc.send_signal(signal.SIGINT)
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        import os

        self.proc.kill()
        self.proc.wait()
        os.close(self.cmd_w)
        self.ctl.close()


@pytest.mark.parametrize("command_waiting", [False, True], ids=["after-done", "command-waiting"])
def test_a_ctrl_c_that_finds_the_vm_idle_is_ignored_unless_its_command_is_already_there(tmp_path, command_waiting):
    # The front end writes a command before it sends any SIGINT for it. So a SIGINT that finds the VM
    # waiting with no command was meant for the command that just ended (ignored, as at a board's
    # idle REPL); one that finds the next command waiting is that command's (it interrupts it at its
    # start: `while True: pass` ends with KeyboardInterrupt instead of running for ever).
    vm = _Vm(tmp_path)
    try:
        if command_waiting:
            vm.interrupt_while_idle(lambda: vm.send(b"SINGLE", b"while True: pass"))
            assert b"KeyboardInterrupt" in vm.done()
        else:
            vm.interrupt_while_idle()
            assert vm.wait(b"INTR") == [b"INTR", b"0"]  # handled, and not kept: then the next command
        vm.send(b"EXEC", b"print(6 * 7)")
        assert vm.done() == b"" and vm.proc.poll() is None  # alive, and the next command runs
    finally:
        vm.close()
