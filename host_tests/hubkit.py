"""Test helpers shared by the hub and end-to-end tests: a registered hub and a CPython device."""

from __future__ import annotations

import io
import json
from pathlib import Path

from cellguard import crypto, message
from cghub import server as hubmod

ROOT = bytes(range(32))
KEY_ID = 1_000_001
DEVICE = "dev-1"


def make_hub(tmp_path: Path, root: bytes = ROOT, key_id: int = KEY_ID, **kw) -> hubmod.Hub:
    store = hubmod.HubStore(tmp_path / "hub.sqlite")
    if store.device(key_id) is None:
        store.register_device(key_id, DEVICE, root, **kw)
    return hubmod.Hub(store, io.StringIO())


def lines(hub: hubmod.Hub) -> list[dict]:
    return [json.loads(x) for x in hub.out.getvalue().splitlines()]


class MemCounter:
    def __init__(self, start: int = 0):
        self.n = start

    def next(self) -> int:
        self.n += 1
        return self.n - 1


def device_channel(mode=message.ENCRYPT, root: bytes = ROOT, key_id: int = KEY_ID, **kw) -> message.Channel:
    def derive(label, n):
        return crypto.hkdf(root, b"cellguard/v1", label, n)

    return message.Channel(derive, MemCounter(), key_id=key_id, mode=mode, **kw)


class HubProcess:
    """A real hub process (`python -m cghub.server serve`) on a database, its log in a file."""

    def __init__(self, db: Path, log: Path, port: int = 0, out: Path | None = None, extra: tuple = ()):
        import subprocess
        import sys

        self.log = log
        cmd = [sys.executable, "-m", "cghub.server", "serve", "--db", str(db), "--host", "127.0.0.1"]
        cmd += ["--port", str(port), *(["--out", str(out)] if out else []), *extra]
        self._logf = open(log, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self._logf)
        self.port = self._wait_port()

    def _wait_port(self, timeout: float = 30) -> int:
        # The hub logs "hub listening on HOST:PORT" once its socket is bound: wait for that line.
        import re
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"hub listening on [\d.]+:(\d+)", self.log.read_text())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                raise AssertionError("hub exited: " + self.log.read_text())
            time.sleep(0.02)
        raise AssertionError("hub did not start: " + self.log.read_text())

    def kill(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._logf.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self._logf.close()

    def rss_mb(self) -> float:
        """The process's peak resident set (VmHWM), MiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0
