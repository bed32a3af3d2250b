"""Where a running virtual board says it is: its `port` and `pid` files, and whether they are still true.

The virtual board writes both files (next to its flash image by default) once its VM runs and
removes them when it stops. A board killed with -9 leaves them behind, and a pty number is reused
by the next program that opens a pty: opening a stale `port` file's path would write into someone
else's terminal (or the modem's UART). So a reader trusts the record only while the process it
names is alive AND holds that pty open (Linux: one of /proc/<pid>/fd points at it).
"""

from __future__ import annotations

import os
from pathlib import Path

PORT_FILE = "port"


def pid_file(port_file: Path) -> Path:
    return port_file.with_name("pid")  # build/virtual-board/port and build/virtual-board/pid


def write(port_file: Path, port: str, pid: int) -> None:
    """Publish the board's pty and pid; the port file last, since readers wait for it."""
    for path, text in ((pid_file(port_file), f"{pid}\n"), (port_file, port + "\n")):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def clear(port_file: Path, pid: int) -> None:
    """Remove the record if it is still this process's (a newer board may have replaced it)."""
    if _read_pid(port_file) == pid:
        port_file.unlink(missing_ok=True)
        pid_file(port_file).unlink(missing_ok=True)


def _read_pid(port_file: Path) -> int | None:
    try:
        return int(pid_file(port_file).read_text().strip())
    except (OSError, ValueError):
        return None


def owns(pid: int, port: str) -> bool:
    """Is process `pid` alive and holding `port` open?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, someone else's: /proc below decides
    fds = Path(f"/proc/{pid}/fd")
    if not Path("/proc/self/fd").is_dir():
        return Path(port).exists()  # no /proc (macOS): alive is the best evidence there is
    try:
        entries = list(fds.iterdir())
    except OSError:
        return False
    target = os.path.realpath(port)
    for fd in entries:
        try:
            if os.readlink(fd) == target:
                return True
        except OSError:
            continue
    return False


def running(port_file: Path) -> tuple[str | None, str]:
    """(port, "") for a live board recorded by `port_file`, else (None, why there is none)."""
    try:
        port = port_file.read_text().strip()
    except OSError:
        return None, f"no virtual board is running ({port_file} does not exist)"
    pid = _read_pid(port_file)
    if pid is None:
        return None, f"{port_file} names {port} but no pid file says which process owns it; not opening it"
    if not owns(pid, port):
        return None, (f"{port_file} is stale: process {pid} is gone or no longer holds {port}; not opening it")
    return port, ""
