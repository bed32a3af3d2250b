"""Rejections logged in aggregate: one line per interval with the count per reason, never one line per
datagram (a flood of forged datagrams must not become a flood of log lines and disk writes)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable


class RejectLog:
    def __init__(self, log: logging.Logger, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.log = log
        self.interval_s = interval_s
        self.clock = clock
        self._counts: Counter[str] = Counter()
        self._sample: dict[str, str] = {}  # reason -> one example (address, detail) of this interval
        self._since = clock()

    def add(self, reason: str, addr, detail: str = "") -> None:
        if reason not in self._counts:
            self._sample[reason] = f"{addr}{' ' + detail if detail else ''}"
        self._counts[reason] += 1
        self.flush()

    def flush(self, force: bool = False) -> None:
        """Write the interval's line if the interval is over (or force) and anything was rejected."""
        now = self.clock()
        if not self._counts or (not force and now - self._since < self.interval_s):
            return
        parts = ", ".join(f"{r} {n} (e.g. {self._sample[r]})" for r, n in sorted(self._counts.items()))
        self.log.warning("rejected in the last %.0f s: %s", now - self._since, parts)
        self._counts.clear()
        self._sample.clear()
        self._since = now
