"""A `cellguard hub serve` as a real process, for tests and benchmarks: started with its arguments,
waited for until every worker says it listens, stopped with SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

LISTENING = re.compile(r"hub listening on [\d.]+:(\d+)")


class HubProcess:
    def __init__(self, args: list[str], workers: int = 1, env: dict | None = None):
        self.workers = workers
        argv = [sys.executable, "-m", "cghub.server", "serve", "--host", "127.0.0.1", "--port", "0", *args]
        if workers > 1:
            argv += ["--workers", str(workers)]
        # A session of its own: a test that fails kills the supervisor and its workers together
        # (__exit__), never leaving workers serving after it.
        self.proc = subprocess.Popen(
            argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.stamps: list[float] = []  # time.monotonic() when each line was read: the order of events
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.port = self.wait_listening()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip())
                self.stamps.append(time.monotonic())
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<eof>")
            self._cond.notify_all()

    def wait_for(self, pattern: re.Pattern | str, count: int = 1, timeout: float = 60) -> list[str]:
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern

        def found():
            return [x for x in self.lines if rx.search(x)]

        with self._cond:
            ok = self._cond.wait_for(lambda: len(found()) >= count or "<eof>" in self.lines, timeout)
            hits = found()
        if not ok or len(hits) < count:
            raise AssertionError(f"hub never logged {rx.pattern!r} x{count}:\n" + "\n".join(self.lines[-40:]))
        return hits

    def stamp(self, pattern: str, nth: int = 0) -> float:
        """When the nth line matching pattern was read (it must have been)."""
        rx = re.compile(pattern)
        with self._cond:
            return [t for x, t in zip(self.lines, self.stamps, strict=False) if rx.search(x)][nth]

    def wait_listening(self) -> int:
        ports = {int(LISTENING.search(x).group(1)) for x in self.wait_for(LISTENING, self.workers)}
        assert len(ports) == 1, ports  # every worker on the one port
        return ports.pop()

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        with self._cond:
            self._cond.wait_for(lambda: "<eof>" in self.lines, timeout)
        return code

    def __enter__(self) -> HubProcess:
        return self

    def __exit__(self, *exc) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the workers too, if a test left them running
        except ProcessLookupError:
            pass
        self.proc.wait()


def scrape(port) -> dict:
    """A hub's /metrics, scraped over HTTP: sample name (with its labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}" if s.labels else "")
            out[key] = s.value
    return out
