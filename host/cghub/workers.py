"""`cellguard hub serve --workers N`: N hub processes on one UDP port (SO_REUSEPORT), one supervisor.

Each worker is a whole `hub serve` of its own (its own event loop, batch thread, cache and database
connections); the kernel spreads the datagrams over their sockets by source address. They share one
truth, the PostgreSQL database: every batch locks the rows of its key ids (cghub.pgstore), so two
workers that receive the same datagram, or two datagrams of one key, apply them one after the other.

The supervisor forwards SIGTERM/SIGINT to every worker (each drains its batch and exits) and waits
for them. If a worker dies on its own, the others are stopped too and the exit code says so: the
service manager (systemd, a container runtime) restarts the whole unit, and no worker is left
serving with a half-configured fleet.

SIGHUP (`systemctl reload`) restarts the workers one at a time: worker i drains and exits, a new
worker i starts with the same arguments (and so reads its KEK files afresh: a KEK rotation,
docs/hub.md section 5), and only once it listens is the next one restarted. The other workers serve
throughout; the kernel gives the restarting worker's share of the source addresses to them. A new
worker that does not come up halts the reload: the others keep serving on what they read when they
started, the slot stays empty, the supervisor says so, and the next SIGHUP starts it again.

The supervisor waits on one pipe (signal.set_wakeup_fd) for signals, worker exits (SIGCHLD) and the
new workers' readiness (each writes a byte on a pipe of its own once it listens, --ready-fd).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys

log = logging.getLogger("cellguard.hub")

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


def pick_port(host: str) -> int:
    """A free UDP port for all workers to share when the operator asked for port 0."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def hangup_means_reload() -> bool:
    """SIGHUP is `systemctl reload` for a service (its stderr the journal, a pipe or a file); for a hub
    started in a terminal it is the terminal going away, and the hub then stops (drained) rather than
    start again on a terminal nobody reads."""
    try:
        return not os.isatty(sys.stderr.fileno())
    except (AttributeError, ValueError, OSError):  # stderr replaced or closed: no terminal either
        return True


def drop_option(argv: list[str], name: str) -> list[str]:
    """argv without `name VALUE` and `name=VALUE`."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


def worker_argv(argv: list[str], port: int, index: int) -> list[str]:
    """The supervisor's own arguments for one worker: --workers dropped, the shared port and the
    worker's index added (later options win in argparse)."""
    return [*drop_option(argv, "--workers"), "--port", str(port), "--reuse-port", "--worker-index", str(index)]


class Supervisor:
    """The N worker slots, and the rolling restart that walks them (SIGHUP)."""

    def __init__(self, argv: list[str], n: int, host: str, port: int):
        self.argv = argv
        self.host = host
        self.port = port
        self.slots: list[subprocess.Popen | None] = [None] * n
        self.stopping = False
        self.codes: list[int] = []  # exit codes of workers that ended outside a reload's own stop
        self.reload: list[int] = []  # the slots a rolling restart has still to restart, in order
        self.retiring: subprocess.Popen | None = None  # the reload's worker that drains before its successor starts
        self.starting: tuple[subprocess.Popen, int, int | None] | None = None  # (worker, slot, its ready pipe)

    # ---- workers ---------------------------------------------------------------------------------
    def _spawn(self, slot: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "cghub.server", *worker_argv(self.argv, self.port, slot)])

    def _spawn_awaited(self, slot: int) -> tuple[subprocess.Popen, int]:
        """A worker that writes a byte on the returned pipe once it listens (a reload waits for that)."""
        ready_r, ready_w = os.pipe()
        os.set_blocking(ready_r, False)  # read only when select says so; never wait on it
        try:
            argv = [*worker_argv(self.argv, self.port, slot), "--ready-fd", str(ready_w)]
            proc = subprocess.Popen([sys.executable, "-m", "cghub.server", *argv], pass_fds=(ready_w,))
        except BaseException:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)
        return proc, ready_r

    def _live(self) -> list[subprocess.Popen]:
        procs = [p for p in self.slots if p is not None]
        procs += [p for p in (self.retiring, self.starting and self.starting[0]) if p is not None]
        return [p for p in procs if p.returncode is None]

    def _stop_all(self) -> None:
        self.stopping = True
        self.reload.clear()
        for p in self._live():
            p.send_signal(signal.SIGTERM)

    def _reap(self) -> None:
        while self._live():
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:  # none left to reap (every live one is accounted for above)
                return
            if pid == 0:
                return
            for p in self._live():
                if p.pid == pid:
                    p.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
                    self._exited(p)

    def _exited(self, p: subprocess.Popen) -> None:
        if p is self.retiring:  # the reload's drain is over: its successor may start
            self.retiring = None
            if p.returncode != 0:
                log.warning("hub worker %d exited (%d) when the reload stopped it", p.pid, p.returncode)
            self._next_step()
            return
        if self.starting is not None and p is self.starting[0]:
            _, slot, ready_r = self.starting
            if ready_r is not None:
                os.close(ready_r)
            self.starting = None
            if not self.stopping:
                log.error(
                    "hub reload halted: the new worker %d exited (%d) before it listened; %d of %d workers serve "
                    "on what they read at their start; fix the cause and reload again",
                    slot, p.returncode, len(self._live()), len(self.slots),
                )
                self.reload.clear()
            return
        self.codes.append(p.returncode)
        if not self.stopping:
            log.error("hub worker %d exited (%d) on its own: stopping the others", p.pid, p.returncode)
            self._stop_all()

    # ---- the rolling restart -----------------------------------------------------------------------
    def _begin_reload(self) -> None:
        if self.stopping:
            return
        if self.reload or self.retiring or self.starting:
            log.info("hub reload: already restarting the workers, this one walks them all again")
        pending = [i for i in range(len(self.slots)) if self.slots[i] is None]  # halted ones first
        self.reload = pending + [i for i in range(len(self.slots)) if i not in pending]
        log.info("hub reload: restarting %d workers one at a time", len(self.slots))
        if not (self.retiring or self.starting):
            self._next_step()

    def _next_step(self) -> None:
        if self.stopping or self.retiring or self.starting:
            return
        if not self.reload:
            log.info("hub reload done: workers %s", " ".join(str(p.pid) if p else "-" for p in self.slots))
            return
        slot = self.reload[0]
        old = self.slots[slot]
        if old is not None and old.returncode is None:  # first it drains (its batch in hand) and exits
            self.slots[slot] = None
            self.retiring = old
            old.send_signal(signal.SIGTERM)
            return
        self.reload.pop(0)
        self.slots[slot] = None
        proc, ready_r = self._spawn_awaited(slot)
        self.starting = (proc, slot, ready_r)
        log.info("hub reload: worker %d started (pid %d)", slot, proc.pid)

    def _ready(self) -> None:
        proc, slot, ready_r = self.starting
        try:
            said = os.read(ready_r, 1)
        except BlockingIOError:  # select's word was for an earlier pipe under this fd number
            return
        os.close(ready_r)
        if not said:  # it closed the pipe without a word: it is exiting, and _reap will say why
            self.starting = (proc, slot, None)
            return
        self.starting = None
        self.slots[slot] = proc
        self._next_step()

    # ---- the loop ----------------------------------------------------------------------------------
    def run(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        old = {sig: signal.signal(sig, lambda *_: None) for sig in _SIGNALS}  # the wakeup byte says which
        try:
            self.slots = [self._spawn(i) for i in range(len(self.slots))]
            pids = " ".join(str(p.pid) for p in self.slots)
            log.info("hub supervisor: %d workers on %s:%d (pids %s)", len(self.slots), self.host, self.port, pids)
            while self._live() or self.retiring or self.starting:
                watch = [wake_r] + ([self.starting[2]] if self.starting and self.starting[2] is not None else [])
                readable, _, _ = select.select(watch, [], [])
                if wake_r in readable:
                    try:
                        got = set(os.read(wake_r, 512))
                    except BlockingIOError:
                        got = set()
                    if got & {signal.SIGTERM, signal.SIGINT} and not self.stopping:
                        self._stop_all()
                    if signal.SIGHUP in got and not self.stopping:
                        if hangup_means_reload():
                            self._begin_reload()
                        else:
                            log.info("hub supervisor: the terminal hung up, stopping")
                            self._stop_all()
                self._reap()
                if self.starting and self.starting[2] is not None and self.starting[2] in readable:
                    self._ready()
            failed = [c for c in self.codes if c != 0]
            return failed[0] if failed else 0
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old.items():
                signal.signal(sig, handler)
            os.close(wake_r)
            os.close(wake_w)


def supervise(argv: list[str], n: int, host: str, port: int) -> int:
    return Supervisor(argv, n, host, port or pick_port(host)).run()
