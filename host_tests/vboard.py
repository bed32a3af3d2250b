"""Test support for the virtual board: start one on a fresh flash image, drive it with real mpremote."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cgsim import virtual_board
from harness import REPO

MPREMOTE = Path(sys.executable).parent / "mpremote"
CELLGUARD = Path(sys.executable).parent / "cellguard"  # the installed command line, as a person runs it


class Board:
    """A running virtual board; stop() kills it (tests call it from a fixture's finaliser)."""

    def __init__(self, workdir: Path, image: Path | None = None, modem: str = "bg96"):
        self.workdir = workdir
        self.image = image or workdir / "flash.img"
        self.log = workdir / "virtual-board.log"
        self.proc, self.port = virtual_board.launch(self.image, workdir / "port", self.log, modem=modem)

    def mpremote(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        """The REAL mpremote command line against this board."""
        proc = subprocess.run(
            [str(MPREMOTE), "connect", self.port, *args],
            capture_output=True, text=True, timeout=timeout, cwd=REPO,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"mpremote {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        return proc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# `cellguard status` waits 5 s for an answer by default (`cellguard flash` 5-10 s); a loaded CI
# machine's virtual board took longer. The tests give them this much unless they pass their own
# (the tools go on as soon as the unit answers).
STATUS_TIMEOUT_S = "60"


def run_tool(name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `cellguard <name>` as a person would (its own process, its exit code, its output)."""
    if name == "status" and "--timeout" not in args:
        args = (*args, "--timeout", STATUS_TIMEOUT_S)
    if name == "flash" and "--console-timeout" not in args:
        args = (*args, "--console-timeout", STATUS_TIMEOUT_S)
    return subprocess.run(
        [str(CELLGUARD), name, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def flash(board: Board, key: Path, *extra: str) -> subprocess.CompletedProcess:
    """`make flash` against this board: tools/flash.py through real mpremote."""
    hub_db = board.workdir / "hub.sqlite"  # provisioning registers the unit here, never in build/
    return run_tool("flash", "--port", board.port, "--service-key", str(key), "--hub-db", str(hub_db), *extra)
