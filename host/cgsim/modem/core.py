"""The emulated modem itself: a pty served from a thread, the command line (echo, parsing,
answers, prompts, payloads), power and restarts, and the state a dialect's handlers work on. The
3GPP commands are in gpp.py, each vendor's in dialects/, the SIM in sim.py, the network in
network.py, the sockets in sockets.py and the faults in faults.py."""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import pty
import random
import select
import socket
import threading
import time
import tty
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from . import dialect as registry
from .atcmd import CME_NO_NETWORK, AtError, Prompt, parse
from .faults import FaultInjection, FaultPlan
from .gpp import ThreeGpp, check_activation
from .network import Network, Registration
from .sim import Sim, inserted
from .sockets import Sockets, UdpFaults

log = logging.getLogger("modem_emulator")

_DEFAULT_SIM = object()  # ModemEmulator(sim=None) means no SIM; leaving it out means Sim()
# The IMEI of the emulated modem: 14 digits and a Luhn check digit, as a real one has.
DEFAULT_IMEI = "350457790123457"


@dataclass
class Delays:
    """Seconds. The defaults are realistic-ish; tests and benches use Delays.zero()."""

    response_s: float = 0.02
    prompt_s: float = 0.01
    boot_s: float = 1.0
    pdp_s: float = 0.3
    socket_open_s: float = 0.1

    @classmethod
    def zero(cls) -> Delays:
        return cls(0, 0, 0, 0, 0)


class ModemEmulator(FaultInjection):
    """One emulated modem. start() opens the pty and serves in a thread; stop() ends it."""

    def __init__(
        self,
        dialect: str,
        sim: Sim | None = _DEFAULT_SIM,  # type: ignore[assignment]
        network: Network | None = None,
        delays: Delays | None = None,
        imei: str = DEFAULT_IMEI,
        seed: int = 0,
        powered: bool = True,
        field_traffic: bool = False,
    ):
        """sim=None: no SIM inserted. powered=False: the modem is off until its power key is
        pulsed (a datagram b"pwrkey" on the reset wire). field_traffic=True: the family's whole
        restart banner and the URCs real units send along a registration change (time zone, RRC
        state, other RATs' registration), as recorded in field trials."""
        self.field_traffic = field_traffic
        self.vendor = registry.lookup(dialect)(self)  # the dialect: what this modem family does its own way
        self.dialect = self.vendor.name
        self.sim: Sim | None = Sim() if sim is _DEFAULT_SIM else sim
        self.powered = powered
        self.power_key_pulses = 0
        self.network = network or Network()
        self.delays = delays or Delays()
        self.imei = imei
        self.udp = UdpFaults()
        self.faults = FaultPlan()
        self.commands: list[str] = []
        self.reboots = 0
        self.split_writes = False
        self._rand = random.Random(seed)
        self._lock = threading.Lock()
        self._timers: list = []
        self._seq = itertools.count()
        self._calls: deque = deque()
        self._thread: threading.Thread | None = None
        self._running = False
        self._reboot_after: int | None = None
        self._booting_until = 0.0
        self.reg = Registration(self._registration_changed)
        self.sockets = Sockets(self.udp, lambda s, size: self._urc(self.vendor.recv_urc(s, size)))
        self._handlers = {**ThreeGpp(self).commands(), **self.vendor.commands()}
        self._power_on_state()

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> str:
        self._master, self._slave = pty.openpty()
        tty.setraw(self._master)
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)
        self._wake_r, self._wake_w = os.pipe()
        self._reset = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._reset.bind(("127.0.0.1", 0))
        self.reset_port = self._reset.getsockname()[1]
        self._running = True
        self._thread = threading.Thread(target=self._loop, name=f"modem-{self.dialect}", daemon=True)
        self._thread.start()
        if self.powered:
            self.call(self._boot)
        return self.path

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        os.write(self._wake_w, b"x")
        if self._thread:
            self._thread.join(5)
        self.sockets.close_all()
        self._reset.close()
        for fd in (self._master, self._slave, self._wake_r, self._wake_w):
            os.close(fd)

    def __enter__(self) -> ModemEmulator:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def call(self, fn: Callable[[], None]) -> None:
        """Run fn in the emulator's thread (every state change happens there)."""
        self._calls.append(fn)
        if self._running:
            os.write(self._wake_w, b"x")

    def _after(self, delay_s: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay_s, next(self._seq), fn))

    # ---- records -----------------------------------------------------------------------------
    def commands_matching(self, prefix: str) -> list[str]:
        return [c for c in list(self.commands) if c.upper().startswith(prefix.upper())]

    # ---- modem state -------------------------------------------------------------------------
    def _power_on_state(self) -> None:
        self.echo = True
        self.cmee = 0
        self.reg.mode = 0
        self.reg.stat = 0
        self.cfun = 1 if self.vendor.radio_on_at_boot else 0
        self.pdp: dict[int, dict] = {}
        self.pdp_active: set[int] = set()
        self.psm = "0"
        self.edrx = "0"
        self.settings: dict[str, str] = {}
        self.sockets.close_all()
        self._inbuf = bytearray()
        self._payload: Prompt | None = None
        self._busy = False
        if self.sim is not None:
            self.sim.power_on()

    def need_sim(self) -> Sim:
        """The SIM, if it is inserted and ready; else the +CME error a command gets."""
        return inserted(self.sim).require_ready()

    def pin_counts(self) -> tuple[int, int]:
        return inserted(self.sim).retries()

    def set_auth(self, cid: int, creds: list[str]) -> None:
        # Recorded for tests as pdp[cid]["user"] / ["password"], whatever the vendor's syntax.
        user, password = (creds + ["", ""])[:2]
        self.pdp.setdefault(cid, {}).update(user=user, password=password)

    def activate(self, cid: int) -> None:
        check_activation(self, cid)
        self.pdp_active.add(cid)

    def udp_send(self, ident: int, data: bytes, host: str, port: int) -> None:
        if not self.pdp_active or not self.reg.registered():
            raise AtError(CME_NO_NETWORK)
        self.sockets.send(ident, data, host, port)

    def _sim_ready(self) -> bool:
        return self.sim is not None and self.sim.ready()

    def _boot(self, boot_urcs: list[str] | None = None) -> None:
        if not self.powered:
            return  # switched off again before it had booted
        word = self.sim.state_word() if self.sim else None
        lines = self.vendor.boot_lines(word) if boot_urcs is None else list(boot_urcs)
        if boot_urcs is not None and self.vendor.boot_reports_sim:
            lines.append("+CPIN: " + (word or "NOT READY"))
        for line in lines:
            self._urc(line)
        self._start_registration()

    def _reboot(self, boot_urcs: list[str] | None = None) -> None:
        self.reboots += 1
        self._power_up(boot_urcs)

    def _power_up(self, boot_urcs: list[str] | None = None) -> None:
        self.faults.hang = None
        self._power_on_state()
        self._booting_until = time.monotonic() + self.delays.boot_s  # deaf until it has booted
        self._after(self.delays.boot_s, lambda: self._boot(boot_urcs))

    def _power_key(self) -> None:
        # A pulse on PWRKEY toggles the power: an off modem boots, an on one (hung or not) goes off.
        self.power_key_pulses += 1
        if self.powered:
            log.info("power key: off")
            self.powered = False
            self.reboots += 1  # answers still pending are never sent
            self.faults.hang = None
            self._power_on_state()
        else:
            log.info("power key: on")
            self.powered = True
            self._power_up()

    def _start_registration(self) -> None:
        if self.cfun != 1 or not self._sim_ready() or self.reg.registered():
            return
        self.reg.set(2)
        self._after(self.network.registration_delay_s, self._registered)

    def _registered(self) -> None:
        if not self.powered or not self._sim_ready() or self.cfun != 1:
            return
        self.reg.set(self.network.outcome())

    def remove_sim_now(self) -> None:
        """remove_sim, for on_command hooks (already in the emulator thread)."""
        self.sim = None
        for line in self.vendor.sim_removed_urcs():
            self._urc(line)
        self.pdp_active.clear()
        self.reg.set(0)

    def _deactivate_pdp(self) -> None:
        cids = sorted(self.pdp_active) or [1]
        self.pdp_active.clear()
        self.sockets.close_all()
        for cid in cids:
            for line in self.vendor.pdp_deactivated_urcs(cid):
                self._urc(line)

    def _remote_close(self, ident: int | None) -> None:
        for s in [s for i, s in self.sockets.items() if ident is None or i == ident]:
            self.sockets.close(s.ident)
            line = self.vendor.closed_urc(s)
            if line:
                self._urc(line)

    # ---- output ------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if not self.split_writes:
            os.write(self._master, data)
            return
        i = 0
        while i < len(data):  # chop at random byte boundaries, with gaps so the reads see them
            n = self._rand.randint(1, 7)
            os.write(self._master, data[i : i + n])
            i += n
            time.sleep(0.0003)

    def _urc(self, line: str) -> None:
        self._write(b"\r\n" + line.encode("latin-1") + b"\r\n")

    def _registration_changed(self, cereg: str | None) -> None:
        if cereg:
            self._urc(cereg)
        for line in self.vendor.registration_urcs(self.reg.stat):
            self._urc(line)

    # ---- the loop ----------------------------------------------------------------------------
    def _loop(self) -> None:
        while self._running:
            timeout = 0.5
            if self._timers:
                timeout = max(0.0, min(timeout, self._timers[0][0] - time.monotonic()))
            try:
                ready, _, _ = select.select(
                    [self._master, self._wake_r, self._reset, *self.sockets.readable()], [], [], timeout
                )
            except (OSError, ValueError):
                ready = []
            if not self._running:
                return
            try:
                self._service(ready)
            except Exception:  # a bug in a handler must not kill the emulated modem
                log.exception("emulator error")

    def _service(self, ready: list) -> None:
        if self._wake_r in ready:
            os.read(self._wake_r, 4096)
        while self._calls:
            self._calls.popleft()()
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, fn = heapq.heappop(self._timers)
            fn()
        if self._reset in ready:
            wire = self._reset.recv(64)
            if wire == b"pwrkey":
                self._power_key()
            elif self.powered:  # a reset line does not switch an off modem on
                log.info("reset wire pulled")
                self._reboot()
        self.sockets.service(ready)
        if self._master in ready:
            try:
                self._inbuf += os.read(self._master, 4096)
            except OSError:
                return
        self._process_input()

    def _process_input(self) -> None:
        if not self.powered:
            self._inbuf.clear()  # an off modem hears nothing
            return
        while not self._busy:
            if self._payload is not None:
                if len(self._inbuf) < self._payload.size:
                    return
                data = bytes(self._inbuf[: self._payload.size])
                del self._inbuf[: self._payload.size]
                prompt, self._payload = self._payload, None
                lines, final = prompt.then(data)
                self._respond(self._pending_cmd, lines, final)
                continue
            end = self._inbuf.find(b"\r")
            if end < 0:
                if len(self._inbuf) > 8192:
                    self._inbuf.clear()
                return
            raw = bytes(self._inbuf[:end])
            del self._inbuf[: end + 1]
            line = raw.decode("latin-1").strip("\n").strip()
            if not line:
                continue
            if self.echo:
                self._write(raw.lstrip(b"\n") + b"\r")
            self._command(line)

    def _command(self, line: str) -> None:
        with self._lock:
            self.commands.append(line)
        log.debug("<- %s", line)
        faults = self.faults
        hook = faults.take(faults.hooks, line)
        if hook:
            hook[2]()
        if time.monotonic() < self._booting_until:
            return
        if faults.hang:
            if faults.hang == "cfun" and line.upper().startswith(self.vendor.reset_command):
                self._reboot()
            return
        item = faults.take_reboot(line)
        if item:
            if not item[1]:
                self._reboot()
                return
            self._reboot_after = item[1]  # _respond sends that many lines, then restarts
        cme = faults.take(faults.cme, line)
        if cme:
            self._respond(line, [], f"+CME ERROR: {cme[2]}")
            return
        replaced = faults.take(faults.replace, line)
        if replaced:
            self._respond(line, list(replaced[2]), "OK")
            return
        try:
            result = self._handle(line)
        except AtError as e:
            result = ([], e.final(self.cmee))
        if isinstance(result, Prompt):
            self._await_payload(line, result)
            return
        self._respond(line, *result)

    def _await_payload(self, line: str, payload: Prompt) -> None:
        self._pending_cmd = line
        self._payload = payload
        prompt = b"" if self.faults.take(self.faults.drop_prompt, line) else self.vendor.prompt
        self._busy = True

        def show():
            self._busy = False
            self._write(prompt)
            self._process_input()

        self._after(self.delays.prompt_s, show)

    def _respond(self, cmd: str, lines: list[str], final: str, after: Callable[[], None] | None = None) -> None:
        faults = self.faults
        if faults.take(faults.drop, cmd):
            return
        delay = self.delays.response_s
        d = faults.take(faults.delay, cmd)
        if d:
            delay += d[2]
        burst = faults.take(faults.burst, cmd)
        out = [b"\r\n" + ln.encode("latin-1") + b"\r\n" for ln in lines]
        if burst:
            urcs = [b"\r\n" + u.encode("latin-1") + b"\r\n" for u in burst[2]]
            out = out[: burst[3]] + urcs + out[burst[3] :]
        if final:
            out.append(b"\r\n" + final.encode() + b"\r\n")
        reboot_after, self._reboot_after = self._reboot_after, None
        if reboot_after is not None:
            out, after = out[:reboot_after], self._reboot  # cut off by a restart
        self._busy = True
        epoch = self.reboots

        def send():
            if epoch != self.reboots:
                return  # the modem restarted before it could answer
            self._busy = False
            self._write(b"".join(out))
            if after:
                after()
            self._process_input()

        self._after(delay, send)

    # ---- command dispatch --------------------------------------------------------------------
    def _handle(self, line: str):
        parsed = parse(line)
        if parsed is None:
            raise AtError(None)
        name, sep, args = parsed
        if name == "" and sep == "":
            return [], "OK"
        if name in ("E0", "E1", "E") and sep == "":
            self.echo = name == "E1"
            return [], "OK"
        handler = self._handlers.get(name)
        if handler is None:
            raise AtError(None)
        return handler(sep, args)
