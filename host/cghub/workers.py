"""`cellguard hub serve --workers N`: N hub processes on one UDP port (SO_REUSEPORT), one supervisor.

Each worker is a whole `hub serve` of its own (its own event loop, batch thread, cache and database
connections); the kernel spreads the datagrams over their sockets by source address. They share one
truth, the PostgreSQL database: every batch locks the rows of its key ids (cghub.pgstore), so two
workers that receive the same datagram, or two datagrams of one key, apply them one after the other.

The supervisor forwards SIGTERM/SIGINT to every worker (each drains its batch and exits) and waits
for them. If a worker dies on its own, the others are stopped too and the exit code says so: the
service manager (systemd, a container runtime) restarts the whole unit, and no worker is left
serving with a half-configured fleet.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys

log = logging.getLogger("cellguard.hub")


def pick_port(host: str) -> int:
    """A free UDP port for all workers to share when the operator asked for port 0."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def worker_argv(argv: list[str], port: int, index: int) -> list[str]:
    """The supervisor's own arguments for one worker: --workers dropped, the shared port and the
    worker's index added (later options win in argparse)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--workers":
            skip = True
            continue
        if a.startswith("--workers="):
            continue
        out.append(a)
    return [*out, "--port", str(port), "--reuse-port", "--worker-index", str(index)]


def supervise(argv: list[str], n: int, host: str, port: int) -> int:
    port = port or pick_port(host)
    procs = [
        subprocess.Popen([sys.executable, "-m", "cghub.server", *worker_argv(argv, port, i)]) for i in range(n)
    ]
    log.info("hub supervisor: %d workers on %s:%d (pids %s)", n, host, port, " ".join(str(p.pid) for p in procs))
    stopping = False

    def stop(signum, _frame):
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        codes: dict[int, int] = {}
        by_pid = {p.pid: p for p in procs}
        while len(codes) < n:
            pid, status = os.wait()  # any child: the first to die matters, whichever it is
            if pid not in by_pid:
                continue
            code = os.waitstatus_to_exitcode(status)
            by_pid[pid].returncode = code  # reaped here: Popen must not signal or wait for it again
            codes[pid] = code
            if not stopping:
                log.error("hub worker %d exited (%d) on its own: stopping the others", pid, code)
                stop(signal.SIGTERM, None)
        failed = [c for c in codes.values() if c != 0]
        return failed[0] if failed else 0
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
