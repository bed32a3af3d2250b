"""`make virtual-board` records where it runs, and `make status` opens a recorded pty only while the
board's process is alive and holds it (a stale port file names whatever pty now has that number)."""

import os
import select
import signal
import subprocess
import sys
import time
import tty

import pytest
from cgsim import vbrecord
from vboard import CELLGUARD, run_tool

pytestmark = pytest.mark.timeout(300)


def _wait_for(path, proc):
    # The board writes its record once its VM runs: wait for that event (or for the process to die).
    while not path.exists():
        assert proc.poll() is None, f"the board exited {proc.returncode}"
        time.sleep(0.05)


def test_make_virtual_board_is_found_by_make_status(tmp_path):
    # `make virtual-board`: the command as a person runs it, no --port-file
    proc = subprocess.Popen([str(CELLGUARD), "virtual-board", "--image", str(tmp_path / "flash.img"), "--modem", "none"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(tmp_path / "port", proc)
        assert int((tmp_path / "pid").read_text()) == proc.pid
        # --timeout 1: an empty board never shows a console, and waiting for one proves nothing more
        found = run_tool("status", "--virtual-dir", str(tmp_path), "--timeout", "1")
        # an empty board has no console, but status reached the board (not "no virtual board running")
        assert "no virtual board" not in found.stderr and found.returncode == 3, found.stderr
        assert "does not answer with the cellguard console" in found.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    assert not (tmp_path / "port").exists() and not (tmp_path / "pid").exists()  # a clean stop clears it
    gone = run_tool("status", "--virtual-dir", str(tmp_path))
    assert gone.returncode == 2 and "no virtual board is running" in gone.stderr


def test_a_stale_port_file_is_never_opened(tmp_path):
    # A board killed with -9 left its record; its pty number now belongs to someone else's terminal.
    other_master, other_slave = os.openpty()
    tty.setraw(other_master)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # alive, holds no pty
    try:
        other_tty = os.ttyname(other_slave)
        for pid in (sleeper.pid, 2**22 + 12345):  # a live process that does not hold it; a dead pid
            vbrecord.write(tmp_path / "port", other_tty, pid)
            proc = run_tool("status", "--virtual-dir", str(tmp_path))
            assert proc.returncode == 2, proc.stdout + proc.stderr
            assert f"is stale: process {pid} is gone or no longer holds {other_tty}; not opening it" in proc.stderr
        ready, _, _ = select.select([other_master], [], [], 0)
        assert not ready, os.read(other_master, 100)  # not one byte reached the other terminal
        # The same pty, recorded with the pid of the process that holds it, is opened.
        assert vbrecord.owns(os.getpid(), other_tty)
    finally:
        sleeper.kill()
        sleeper.wait()
        os.close(other_master)
        os.close(other_slave)


def test_flash_starts_a_new_board_instead_of_a_stale_record(tmp_path):
    from cgdev import flash as flash_tool

    master, slave = os.openpty()
    try:
        vbrecord.write(tmp_path / "port", os.ttyname(slave), 2**22 + 12345)
        port = flash_tool.virtual_board_port(tmp_path)
        assert port != os.ttyname(slave)
        assert vbrecord.running(tmp_path / "port")[0] == port
    finally:
        pid = int((tmp_path / "pid").read_text())
        os.kill(pid, signal.SIGTERM)
        os.close(master)
        os.close(slave)
