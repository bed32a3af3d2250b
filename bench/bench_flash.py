"""Flashing and console figures on the virtual board (real mpremote -> pty -> MicroPython unix port).

flash.full_s (every file sent) and flash.incremental_s (nothing changed) are `tools/flash.py` runs
as a person sees them; their anchor, measured in the same run, is mpremote's own file copy of the same
files (`fs_writefile` with its default 256-byte chunks, what `mpremote fs cp` does).
"""

import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOALS = {
    "flash.incremental_s": ("<=", 3.0),
    "console.status_json_ms": ("<=", 200.0),
}


def _flash(port: str, key: Path, *extra: str) -> float:
    t = time.perf_counter()
    proc = subprocess.run(
        # --no-provision: this measures copying; provisioning needs a modem and is timed nowhere here.
        [sys.executable, "-m", "cgdev.flash", "--port", port, "--service-key", str(key),
         "--no-provision", *extra],
        capture_output=True, text=True, timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout + proc.stderr)
    return time.perf_counter() - t


def _mpremote_copy(port: str) -> tuple[float, int]:
    from cgdev import flash
    from mpremote.transport_serial import SerialTransport

    files = flash.firmware_files()
    t = SerialTransport(port, baudrate=115200, timeout=1)
    try:
        t.enter_raw_repl(soft_reset=True)
        start = time.perf_counter()
        dirs = sorted({"anchor/" + "/".join(p.split("/")[:i]) for p in files for i in range(p.count("/") + 1)})
        t.exec("import os\nfor d in %r:\n try:\n  os.mkdir(d.rstrip('/'))\n except OSError:\n  pass" % dirs)
        for path, data in files.items():
            t.fs_writefile("anchor/" + path, data)
        took = time.perf_counter() - start
        t.exit_raw_repl()
    finally:
        t.close()
    return took, sum(len(d) for d in files.values())


def run() -> dict:
    from cgdev import status as status_tool
    from cgsim import virtual_board

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        proc, port = virtual_board.launch(tmp / "flash.img", tmp / "port", tmp / "log")
        try:
            key = tmp / "master.key"
            first = _flash(port, key)
            full = _flash(port, key, "--force")
            incremental = _flash(port, key)
            anchor_s, nbytes = _mpremote_copy(port)
            with status_tool.ConsoleClient(port, timeout=5) as client:
                client.attach()
                n = 20
                t = time.perf_counter()
                for _ in range(n):
                    client.status()
                status_ms = (time.perf_counter() - t) * 1000 / n
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    return {
        "flash.first_s": round(first, 3),
        "flash.full_s": round(full, 3),
        "flash.incremental_s": round(incremental, 3),
        "flash.mpremote_fs_cp_s": round(anchor_s, 3),
        "flash.firmware_bytes": nbytes,
        "flash.incremental_over_full": round(incremental / full, 3),
        "console.status_json_ms": round(status_ms, 2),
    }
