"""The virtual board speaks MicroPython's serial protocols: real mpremote -> pty -> real MicroPython."""

import pytest
import serial
from vboard import Board

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def board(tmp_path):
    b = Board(tmp_path)
    yield b
    b.stop()


def to_friendly_repl(s: serial.Serial) -> None:
    s.write(b"\r\x03\x02")  # interrupt whatever runs, leave the raw REPL: the banner ends it
    assert s.read_until(b"information.\r\n>>> ").endswith(b">>> ")
    # Then an exchange whose answer is unique, so no prompt printed earlier can be mistaken for it.
    s.write(b"'sync' * 2\r")
    assert s.read_until(b"'syncsync'\r\n>>> ").endswith(b"syncsync'\r\n>>> ")


def test_mpremote_fs_ls_cp_exec_on_littlefs(board, tmp_path):
    src = tmp_path / "hello.py"
    src.write_text("GREETING = 'hi from littlefs'\n")
    board.mpremote("fs", "mkdir", ":lib")
    board.mpremote("fs", "cp", str(src), ":lib/hello.py")
    listing = board.mpremote("fs", "ls", ":lib").stdout
    assert "hello.py" in listing
    out = board.mpremote("exec", "import sys, vfs; from hello import GREETING; print(GREETING, vfs.VfsLfs2)").stdout
    assert "hi from littlefs" in out
    # Reading back a file through mpremote returns the same bytes.
    back = tmp_path / "back.py"
    board.mpremote("fs", "cp", ":lib/hello.py", str(back))
    assert back.read_bytes() == src.read_bytes()


def test_exec_error_reaches_mpremote_as_traceback(board):
    proc = board.mpremote("exec", "raise ValueError('boom')", check=False)
    assert proc.returncode == 1
    assert "ValueError: boom" in proc.stdout + proc.stderr
    assert "device.py" not in proc.stdout + proc.stderr  # the board's traceback starts at user code


def test_flash_persists_across_runs(tmp_path):
    first = Board(tmp_path)
    try:
        first.mpremote("exec", "with open('note.txt','w') as f: f.write('kept')")
    finally:
        first.stop()
    second = Board(tmp_path)
    try:
        assert "kept" in second.mpremote("exec", "print(open('note.txt').read())").stdout
    finally:
        second.stop()


def test_soft_reset_in_friendly_repl_runs_boot_and_main(board, tmp_path):
    (tmp_path / "boot.py").write_text("print('boot ran')\n")
    (tmp_path / "main.py").write_text("print('main ran')\n")
    board.mpremote("fs", "cp", str(tmp_path / "boot.py"), ":boot.py", "+", "fs", "cp", str(tmp_path / "main.py"), ":main.py")
    with serial.Serial(board.port, timeout=60) as s:  # reads end at their prompt; bounds a hang
        to_friendly_repl(s)
        s.write(b"\x04")  # soft reset from the friendly REPL: boot.py then main.py, as on a board
        out = s.read_until(b">>> ")
    assert b"MPY: soft reboot" in out
    assert out.index(b"boot ran") < out.index(b"main ran")


def test_friendly_repl_evaluates_and_ctrl_c_interrupts(board):
    with serial.Serial(board.port, timeout=60) as s:  # reads end at their prompt; bounds a hang
        to_friendly_repl(s)
        s.write(b"6*7\r")
        assert b"42" in s.read_until(b">>> ")
        s.write(b"while True: pass\r")
        s.read_until(b"pass\r\n")
        s.write(b"\x03")
        assert b"KeyboardInterrupt" in s.read_until(b">>> ")


def test_raw_paste_window_flow_control_with_large_code(board):
    # Several paste windows (128 bytes each) of code: mpremote must wait for \x01 between them.
    body = "x = 0\n" + "x += 1\n" * 400 + "print('x =', x)\n"
    out = board.mpremote("exec", body).stdout
    assert "x = 400" in out


def test_mpremote_soft_reset_and_repl(board, tmp_path):
    import os
    import pty
    import select
    import subprocess
    import time

    from vboard import MPREMOTE

    (tmp_path / "boot.py").write_text("print('boot ran')\n")
    board.mpremote("fs", "cp", str(tmp_path / "boot.py"), ":boot.py")
    assert "after reset" in board.mpremote("soft-reset", "exec", "print('after reset')").stdout
    # `mpremote repl` wants a terminal: give it one, type an expression, leave with Ctrl-].
    master, slave = pty.openpty()
    proc = subprocess.Popen([str(MPREMOTE), "connect", board.port, "repl"], stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 120  # bounds a hang; the answer is the event
        sent_at = None
        while time.monotonic() < deadline and b"42" not in out.split(b"6*7")[-1]:
            if select.select([master], [], [], 0.2)[0]:
                out += os.read(master, 4096)
            # mpremote prints "Connected" before it puts its terminal in raw mode, so keystrokes
            # typed at once can be swallowed by the line discipline: type again until answered.
            if b"Connected to MicroPython" in out and (sent_at is None or time.monotonic() - sent_at > 2):
                os.write(master, b"\r6*7\r")
                sent_at = time.monotonic()
        os.write(master, b"\x1d")  # Ctrl-]: leave mpremote's terminal
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert b"42" in out.split(b"6*7")[-1], out[-400:]
