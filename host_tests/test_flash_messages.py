"""`make flash` says what happened in one clear line, never with a traceback a person reads as a crash."""

import signal
import subprocess
import sys

import pytest
from harness import REPO
from vboard import STATUS_TIMEOUT_S, Board

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def board(tmp_path):
    b = Board(tmp_path)
    yield b
    b.stop()


def _flash_cmd(board, tmp_path):
    # `make flash PORT=...`: tools/flash.py, with this test's own keys (a fresh image is built)
    return [sys.executable, str(REPO / "tools" / "flash.py"), "--port", board.port,
            "--service-key", str(tmp_path / "master.key"), "--signing-key", str(tmp_path / "signing.pem"),
            "--hub-db", str(tmp_path / "hub.sqlite"), "--console-timeout", STATUS_TIMEOUT_S]


def test_the_first_flash_explains_the_native_module_in_one_line(board, tmp_path):
    proc = subprocess.run(_flash_cmd(board, tmp_path), capture_output=True, text=True, timeout=500, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "SyntaxError" not in proc.stderr, proc.stderr
    about = [line for line in proc.stderr.splitlines() if "_fastxor" in line]
    assert about == ["image: cellguard/_fastxor.py kept as source: it has native code and no -march was "
                     "given; the board compiles it at import"], proc.stderr


def test_ctrl_c_during_a_flash_prints_one_line(board, tmp_path):
    proc = subprocess.Popen(_flash_cmd(board, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    try:
        for line in proc.stdout:  # wait for the copy to begin (an event, not a time)
            if line.startswith("[3/8]"):
                break
        proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("flash: interrupted (Ctrl-C) during step "), err
    assert "run the flash again to finish it" in err
