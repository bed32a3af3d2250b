"""An emulated NB-IoT/LTE-M modem on a real pty, in four vendor dialects, with fault injection.

Standalone (`make emulator DIALECT=bg96`):

    cellguard emulator --dialect bg96      # prints the pty path; Ctrl-C to stop

As a library (tests run it in a thread of the test process and drive it directly):

    with ModemEmulator("bg96", delays=Delays.zero()) as emu:
        path = emu.path                 # point the firmware's UART here
        emu.drop_response("AT+CSQ")     # fault injection, see the methods under "faults"
        ...
        assert not emu.commands_matching("AT+QIACT")   # every command received is recorded

The emulator models a SIM (ICCID, IMSI, PIN/PUK with retry counters, +CLCK/+CPWD, absent or
swapped), an IMEI, a network (registration delay, denial, roaming, signal) and UDP sockets that are
bridged to real UDP sockets on 127.0.0.1. A "reset wire" (a UDP port, `reset_port`) stands in for
the modem's reset pin: any datagram sent to it power-cycles the modem, except b"pwrkey", which is a
pulse on its power key (it toggles: switches an off modem on, an on one off, hung or not).
Like a real nRF9160 SLM, the nrf91 modem starts with its radio off (AT+CFUN? is 0).
"""

from __future__ import annotations

import argparse
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
from dataclasses import dataclass, field

log = logging.getLogger("modem_emulator")

DIALECTS = ("nrf91", "bg96", "sim7080", "sara-r4")

# +CME ERROR codes (3GPP TS 27.007 9.2.1)
CME_NOT_ALLOWED = 3
CME_NOT_SUPPORTED = 4
CME_SIM_NOT_INSERTED = 10
CME_SIM_PIN_REQUIRED = 11
CME_SIM_PUK_REQUIRED = 12
CME_INCORRECT_PASSWORD = 16
CME_NO_NETWORK = 30
CME_PDP_AUTH_FAILURE = 149

_DEFAULT_SIM = object()  # ModemEmulator(sim=None) means no SIM; leaving it out means Sim()


@dataclass
class Sim:
    iccid: str = "89882806660000012345"
    imsi: str = "901280000012345"
    pin: str = "1234"
    puk: str = "12345678"
    pin_enabled: bool = False
    pin_left: int = 3
    puk_left: int = 10
    unlocked: bool = False  # PIN entered since power-up


@dataclass
class Network:
    registration_delay_s: float = 0.0
    deny: bool = False
    roaming: bool = False
    rsrp: int = 60  # +CESQ index: dBm = rsrp - 141
    rsrq: int = 20  # +CESQ index: dB = rsrq / 2 - 20
    rssi: int = 20  # +CSQ index: dBm = -113 + 2 * rssi
    # (user, password) the network requires on the PDP context; None accepts anything
    credentials: tuple[str, str] | None = None


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


@dataclass
class _Prompt:
    """A handler's answer that asks for a raw payload after a prompt."""

    size: int
    then: Callable[[bytes], tuple[list[str], str]]


@dataclass
class _Socket:
    ident: int
    sock: socket.socket
    remote: tuple[str, int] | None = None
    queue: deque = field(default_factory=deque)
    held: tuple | None = None


@dataclass
class UdpFaults:
    loss_out: int = 0  # drop the next N datagrams the device sends
    loss_in: int = 0  # drop the next N datagrams arriving for the device
    duplicate_in: int = 0  # deliver the next N arriving datagrams twice
    reorder_in: int = 0  # hold the next N arriving datagrams back behind the following one
    rx_limit: int = 16  # the modem's receive buffer, in datagrams; beyond it they are lost
    overflows: int = 0  # datagrams lost to a full receive buffer (read by tests)


def split_args(text: str) -> list[str]:
    """Comma-separated AT arguments, quotes removed (quoted commas kept)."""
    out, cur, quoted = [], "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [a.strip() for a in out]


class ModemEmulator:
    """One emulated modem. start() opens the pty and serves in a thread; stop() ends it."""

    RESET_COMMANDS = {
        "nrf91": "AT#XRESET",
        "bg96": "AT+CFUN=1,1",
        "sim7080": "AT+CFUN=1,1",
        "sara-r4": "AT+CFUN=15",
    }
    BOOT_URCS = {
        "nrf91": ["Ready"],
        "bg96": ["RDY", "+CFUN: 1"],
        "sim7080": ["RDY", "+CFUN: 1"],
        "sara-r4": [],
    }

    def __init__(
        self,
        dialect: str,
        sim: Sim | None = _DEFAULT_SIM,  # type: ignore[assignment]
        network: Network | None = None,
        delays: Delays | None = None,
        imei: str = "350457790123458",
        seed: int = 0,
        powered: bool = True,
    ):
        """sim=None: no SIM inserted. powered=False: the modem is off until its power key is
        pulsed (a datagram b"pwrkey" on the reset wire)."""
        if dialect not in DIALECTS:
            raise ValueError(f"unknown dialect {dialect!r}; one of {', '.join(DIALECTS)}")
        self.dialect = dialect
        self.sim: Sim | None = Sim() if sim is _DEFAULT_SIM else sim
        self.powered = powered
        self.power_key_pulses = 0
        self.network = network or Network()
        self.delays = delays or Delays()
        self.imei = imei
        self.udp = UdpFaults()
        self.commands: list[str] = []
        self.reboots = 0
        self._rand = random.Random(seed)
        self._lock = threading.Lock()
        self._timers: list = []
        self._seq = itertools.count()
        self._calls: deque = deque()
        self._thread: threading.Thread | None = None
        self._running = False
        # faults (set through the methods below)
        self._drop: list[list] = []
        self._delay: list[list] = []
        self._cme: list[list] = []
        self._burst: list[list] = []
        self._reboot_during: list[list] = []
        self._reboot_after: int | None = None
        self._hooks: list[list] = []
        self._drop_prompt: list[list] = []
        self._booting_until = 0.0
        self.split_writes = False
        self._hang: str | None = None
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
        for s in self.sockets.values():
            s.sock.close()
        self.sockets.clear()
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

    # ---- faults ------------------------------------------------------------------------------
    def drop_response(self, prefix: str, count: int = 1) -> None:
        """The next `count` commands starting with prefix get no response (the action happens)."""
        self._drop.append([prefix.upper(), count])

    def delay_response(self, prefix: str, seconds: float, count: int = 1) -> None:
        self._delay.append([prefix.upper(), count, seconds])

    def cme_error(self, prefix: str, code: int, count: int = 1) -> None:
        """The next `count` commands starting with prefix fail with +CME ERROR: code."""
        self._cme.append([prefix.upper(), count, code])

    def urc_burst(self, prefix: str, lines: list[str]) -> None:
        """Put these URC lines between the lines of the next response to a prefix command."""
        self._burst.append([prefix.upper(), 1, lines])

    def reboot_during(self, prefix: str, after_lines: int = 0) -> None:
        """The modem restarts in the middle of the next command starting with prefix: before it
        answers, or (after_lines=n) after the first n lines of its reply."""
        self._reboot_during.append([prefix.upper(), after_lines])

    def drop_prompt(self, prefix: str, count: int = 1) -> None:
        """The prompt for the next payload command is lost; the modem still waits for the payload."""
        self._drop_prompt.append([prefix.upper(), count])

    def inject(self, data: bytes) -> None:
        """Write these bytes (noise, garbage, a too-long line) to the device now."""
        self.call(lambda: self._write(data))

    def hang(self, until: str = "cfun") -> None:
        """Stop answering. until="cfun": the dialect's software reset (AT+CFUN=1,1, AT+CFUN=15 on
        u-blox, AT#XRESET on the nRF SLM) still resets it; "pin": only the reset wire does."""
        self._hang = until

    def reboot(self, boot_urcs: list[str] | None = None) -> None:
        """A spontaneous restart (brown-out, watchdog). boot_urcs: what it prints when it is back
        instead of the dialect's usual lines (e.g. ["+CFUN: 1"]: the RDY was lost)."""
        self.call(lambda: self._reboot(boot_urcs))

    def remove_sim(self) -> None:
        self.call(self.remove_sim_now)

    def remove_sim_now(self) -> None:
        """remove_sim, for on_command hooks (already in the emulator thread)."""
        self._remove_sim()

    def insert_sim(self, sim: Sim) -> None:
        """A (possibly different) SIM is inserted: the modem restarts, as most do on a SIM swap."""

        def do():
            self.sim = sim
            self._reboot()

        self.call(do)

    def lose_registration(self, regain_after_s: float | None = None) -> None:
        def do():
            self._set_stat(2)
            if regain_after_s is not None:
                self._after(regain_after_s, self._registered)

        self.call(do)

    def on_command(self, prefix: str, action: Callable[[], None], count: int = 1) -> None:
        """Run action (in the emulator thread) when the next command starting with prefix arrives,
        before it is answered: a way to make a fault land at an exact point of a driver run."""
        self._hooks.append([prefix.upper(), count, action])

    def deactivate_pdp(self) -> None:
        """The network deactivates the PDP context; the modem's sockets go with it."""
        self.call(self._deactivate_pdp)

    def _deactivate_pdp(self) -> None:
        cids = sorted(self.pdp_active) or [1]
        self.pdp_active.clear()
        for ident in list(self.sockets):
            self.sockets.pop(ident).sock.close()
        for cid in cids:
            if self.dialect == "bg96":
                self._urc(f'+QIURC: "pdpdeact",{cid}')
            elif self.dialect == "sim7080":
                self._urc(f"+APP PDP: {cid},DEACTIVE")
            elif self.settings.get("cgerep") == "1":
                self._urc(f"+CGEV: NW PDN DEACT {cid}")

    def push_urc(self, line: str) -> None:
        self.call(lambda: self._urc(line))

    # ---- modem state -------------------------------------------------------------------------
    def _power_on_state(self) -> None:
        self.echo = True
        self.cmee = 0
        self.cereg_mode = 0
        self.stat = 0
        self.cfun = 0 if self.dialect == "nrf91" else 1  # the SLM starts with the radio off
        self.pdp: dict[int, dict] = {}
        self.pdp_active: set[int] = set()
        self.psm = "0"
        self.edrx = "0"
        self.settings: dict[str, str] = {}
        self.sockets: dict[int, _Socket] = getattr(self, "sockets", {})
        for s in self.sockets.values():
            s.sock.close()
        self.sockets = {}
        self._inbuf = bytearray()
        self._payload: _Prompt | None = None
        self._busy = False
        if self.sim is not None:
            self.sim.unlocked = False

    def _sim_ready(self) -> bool:
        return (
            self.sim is not None and (not self.sim.pin_enabled or self.sim.unlocked) and self.sim.puk_left > 0
        )

    def _boot(self, boot_urcs: list[str] | None = None) -> None:
        if not self.powered:
            return  # switched off again before it had booted
        for line in self.BOOT_URCS[self.dialect] if boot_urcs is None else boot_urcs:
            self._urc(line)
        if self.dialect in ("bg96", "sim7080"):
            self._urc("+CPIN: " + self._cpin_word() if self.sim else "+CPIN: NOT READY")
        self._start_registration()

    def _reboot(self, boot_urcs: list[str] | None = None) -> None:
        self.reboots += 1
        self._power_up(boot_urcs)

    def _power_up(self, boot_urcs: list[str] | None = None) -> None:
        self._hang = None
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
            self._hang = None
            self._power_on_state()
            self.stat = 0
        else:
            log.info("power key: on")
            self.powered = True
            self._power_up()

    def _start_registration(self) -> None:
        if self.cfun != 1 or not self._sim_ready() or self.stat in (1, 5):
            return
        self._set_stat(2)
        self._after(self.network.registration_delay_s, self._registered)

    def _registered(self) -> None:
        if not self.powered or not self._sim_ready() or self.cfun != 1:
            return
        self._set_stat(3 if self.network.deny else 5 if self.network.roaming else 1)

    def _set_stat(self, stat: int) -> None:
        if stat == self.stat:
            return
        self.stat = stat
        if self.cereg_mode:
            self._urc("+CEREG: " + self._cereg_fields(stat))

    def _cereg_fields(self, stat: int) -> str:
        if self.cereg_mode >= 2 and stat in (1, 5):
            return f'{stat},"0A1B","01A2D001",7'
        return str(stat)

    def _remove_sim(self) -> None:
        self.sim = None
        if self.dialect in ("bg96", "sim7080"):
            self._urc("+CPIN: NOT READY")
        self.pdp_active.clear()
        self._set_stat(0)

    def _cpin_word(self) -> str:
        sim = self.sim
        if sim.puk_left <= 0:
            return "SIM PUK"  # blocked for good in a real SIM; good enough here
        if sim.pin_left <= 0:
            return "SIM PUK"
        if sim.pin_enabled and not sim.unlocked:
            return "SIM PIN"
        return "READY"

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

    # ---- the loop ----------------------------------------------------------------------------
    def _loop(self) -> None:
        while self._running:
            timeout = 0.5
            if self._timers:
                timeout = max(0.0, min(timeout, self._timers[0][0] - time.monotonic()))
            socks = [s.sock for s in self.sockets.values()]
            try:
                ready, _, _ = select.select(
                    [self._master, self._wake_r, self._reset, *socks], [], [], timeout
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
        for s in list(self.sockets.values()):
            if s.sock in ready:
                self._udp_in(s)
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

    def _take(self, faults: list[list], cmd: str):
        for f in faults:
            if cmd.upper().startswith(f[0]) and f[1] > 0:
                f[1] -= 1
                return f
        return None

    def _command(self, line: str) -> None:
        with self._lock:
            self.commands.append(line)
        log.debug("<- %s", line)
        upper = line.upper()
        hook = self._take(self._hooks, line)
        if hook:
            hook[2]()
        if time.monotonic() < self._booting_until:
            return
        if self._hang:
            if self._hang == "cfun" and upper.startswith(self.RESET_COMMANDS[self.dialect]):
                self._reboot()
            return
        for item in self._reboot_during:
            if upper.startswith(item[0]):
                self._reboot_during.remove(item)
                if not item[1]:
                    self._reboot()
                    return
                self._reboot_after = item[1]  # _respond sends that many lines, then restarts
                break
        cme = self._take(self._cme, line)
        if cme:
            self._respond(line, [], f"+CME ERROR: {cme[2]}")
            return
        try:
            result = self._handle(line)
        except _AtError as e:
            result = ([], e.final(self.cmee))
        if isinstance(result, _Prompt):
            self._pending_cmd = line
            self._payload = result
            prompt = b"@" if self.dialect == "sara-r4" else b"\r\n> "
            if self._take(self._drop_prompt, line):
                prompt = b""
            self._busy = True

            def show():
                self._busy = False
                self._write(prompt)
                self._process_input()

            self._after(self.delays.prompt_s, show)
            return
        self._respond(line, *result)

    def _respond(
        self, cmd: str, lines: list[str], final: str, after: Callable[[], None] | None = None
    ) -> None:
        if self._take(self._drop, cmd):
            return
        delay = self.delays.response_s
        d = self._take(self._delay, cmd)
        if d:
            delay += d[2]
        burst = self._take(self._burst, cmd)
        out = [b"\r\n" + ln.encode("latin-1") + b"\r\n" for ln in lines]
        if burst:
            urcs = [b"\r\n" + u.encode() + b"\r\n" for u in burst[2]]
            out = out[:1] + urcs + out[1:]
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

    # ---- UDP ---------------------------------------------------------------------------------
    def _open_socket(self, ident: int, local_port: int = 0) -> _Socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", local_port))
        s.setblocking(False)
        sock = _Socket(ident, s)
        self.sockets[ident] = sock
        return sock

    def _close_socket(self, ident: int) -> None:
        s = self.sockets.pop(ident, None)
        if s is None:
            raise _AtError(CME_NOT_ALLOWED)
        s.sock.close()

    def _udp_send(self, ident: int, data: bytes, host: str, port: int) -> None:
        if not self.pdp_active or self.stat not in (1, 5):
            raise _AtError(CME_NO_NETWORK)
        s = self.sockets.get(ident)
        if s is None:
            raise _AtError(CME_NOT_ALLOWED)
        if self.udp.loss_out > 0:
            self.udp.loss_out -= 1
            return
        s.sock.sendto(data, (host, port))

    def _udp_in(self, s: _Socket) -> None:
        try:
            data, addr = s.sock.recvfrom(65535)
        except OSError:
            return
        u = self.udp
        if u.loss_in > 0:
            u.loss_in -= 1
            return
        copies = 1
        if u.duplicate_in > 0:
            u.duplicate_in -= 1
            copies = 2
        was_empty = not s.queue
        for _ in range(copies):
            item = (data, addr[0], addr[1])
            if u.reorder_in > 0 and s.held is None and copies == 1:
                u.reorder_in -= 1
                s.held = item  # delivered behind the next datagram
                continue
            self._enqueue(s, item)
            if s.held is not None:
                held, s.held = s.held, None
                self._enqueue(s, held)
        if was_empty and s.queue:
            self._urc(self._recv_urc(s, len(s.queue[0][0])))

    def _enqueue(self, s: _Socket, item: tuple) -> None:
        if len(s.queue) >= self.udp.rx_limit:
            self.udp.overflows += 1
            return
        s.queue.append(item)

    def _recv_urc(self, s: _Socket, size: int) -> str:
        return {
            "nrf91": f"#XAPOLL: {s.ident},1",
            "bg96": f'+QIURC: "recv",{s.ident}',
            "sim7080": f"+CADATAIND: {s.ident}",
            "sara-r4": f"+UUSORF: {s.ident},{size}",
        }[self.dialect]

    def _pop(self, ident: int):
        s = self.sockets.get(ident)
        if s is None:
            raise _AtError(CME_NOT_ALLOWED)
        return s.queue.popleft() if s.queue else None

    # ---- command handlers --------------------------------------------------------------------
    def _handle(self, line: str):
        upper = line.upper()
        if not upper.startswith("AT"):
            raise _AtError(None)
        body = line[2:]
        if body == "":
            return [], "OK"
        if upper in ("ATE0", "ATE1", "ATE"):
            self.echo = upper == "ATE1"
            return [], "OK"
        name, sep, rest = body, "", ""
        for i, ch in enumerate(body):
            if ch in "=?":
                name, sep, rest = body[:i], ch, body[i + 1 :]
                if ch == "=" and rest == "?":
                    sep, rest = "=?", ""
                break
        name = name.upper()
        args = split_args(rest) if sep == "=" else []
        handler = self._dialect_handlers().get(name) or self._common_handlers().get(name)
        if handler is None:
            raise _AtError(None)
        return handler(sep, args)

    def _need_sim(self) -> Sim:
        if self.sim is None:
            raise _AtError(CME_SIM_NOT_INSERTED)
        if self.sim.puk_left <= 0 or self.sim.pin_left <= 0:
            raise _AtError(CME_SIM_PUK_REQUIRED)
        if self.sim.pin_enabled and not self.sim.unlocked:
            raise _AtError(CME_SIM_PIN_REQUIRED)
        return self.sim

    def _check_pin(self, pin: str) -> None:
        sim = self.sim
        if sim is None:
            raise _AtError(CME_SIM_NOT_INSERTED)
        if sim.pin_left <= 0:
            raise _AtError(CME_SIM_PUK_REQUIRED)
        if pin != sim.pin:
            sim.pin_left -= 1
            raise _AtError(CME_SIM_PUK_REQUIRED if sim.pin_left <= 0 else CME_INCORRECT_PASSWORD)
        sim.pin_left = 3

    def _common_handlers(self) -> dict:
        return {
            "+CMEE": self._h_cmee,
            "+CEREG": self._h_cereg,
            "+CFUN": self._h_cfun,
            "+CPIN": self._h_cpin,
            "+CLCK": self._h_clck,
            "+CPWD": self._h_cpwd,
            "+CIMI": lambda sep, a: ([self._need_sim().imsi], "OK"),
            "+CGSN": lambda sep, a: ([self.imei], "OK"),
            "+GSN": lambda sep, a: ([self.imei], "OK"),
            "+CCID": self._h_ccid,
            "+CESQ": lambda sep, a: (
                [f"+CESQ: 99,99,255,255,{self.network.rsrq},{self.network.rsrp}"],
                "OK",
            ),
            "+CSQ": lambda sep, a: ([f"+CSQ: {self.network.rssi},99"], "OK"),
            "+CPSMS": self._h_cpsms,
            "+CEDRXS": self._h_cedrxs,
            "+CGDCONT": self._h_cgdcont,
            "+CGAUTH": self._h_cgauth,
            "+CGACT": self._h_cgact,
            "+CGEREP": self._h_cgerep,
        }

    def _h_cmee(self, sep, args):
        if sep == "=":
            self.cmee = int(args[0] or 0)
            return [], "OK"
        return [f"+CMEE: {self.cmee}"], "OK"

    def _h_cereg(self, sep, args):
        if sep == "=":
            self.cereg_mode = int(args[0] or 0)
            return [], "OK"
        return [f"+CEREG: {self.cereg_mode},{self._cereg_fields(self.stat)}"], "OK"

    def _h_cfun(self, sep, args):
        if sep == "?":
            return [f"+CFUN: {self.cfun}"], "OK"
        if args[:2] == ["1", "1"] or args[:1] == ["15"]:
            return [], "OK", self._reboot
        self.cfun = int(args[0])
        if self.cfun == 1:
            return [], "OK", self._start_registration
        self.pdp_active.clear()
        self._set_stat(0)
        return [], "OK"

    def _h_cpin(self, sep, args):
        if sep == "?":
            if self.sim is None:
                raise _AtError(CME_SIM_NOT_INSERTED)
            return [f"+CPIN: {self._cpin_word()}"], "OK"
        sim = self.sim
        if sim is None:
            raise _AtError(CME_SIM_NOT_INSERTED)
        if len(args) >= 2:  # PUK and new PIN
            if sim.puk_left <= 0:
                raise _AtError(CME_SIM_PUK_REQUIRED)
            if args[0] != sim.puk:
                sim.puk_left -= 1
                raise _AtError(CME_INCORRECT_PASSWORD)
            sim.puk_left, sim.pin_left, sim.pin, sim.unlocked = 10, 3, args[1], True
            return [], "OK", self._start_registration
        if not sim.pin_enabled or sim.unlocked:
            raise _AtError(CME_NOT_ALLOWED)
        self._check_pin(args[0])
        sim.unlocked = True
        return [], "OK", self._start_registration

    def _h_clck(self, sep, args):
        if not args or args[0].upper() != "SC":
            raise _AtError(CME_NOT_SUPPORTED)
        sim = self._need_sim()
        mode = int(args[1])
        if mode == 2:
            return [f"+CLCK: {int(sim.pin_enabled)}"], "OK"
        self._check_pin(args[2] if len(args) > 2 else "")
        sim.pin_enabled = mode == 1
        sim.unlocked = True
        return [], "OK"

    def _h_cpwd(self, sep, args):
        if len(args) < 3 or args[0].upper() != "SC":
            raise _AtError(CME_NOT_SUPPORTED)
        sim = self._need_sim()
        self._check_pin(args[1])
        sim.pin = args[2]
        return [], "OK"

    def _h_ccid(self, sep, args):
        if self.sim is None:
            raise _AtError(CME_SIM_NOT_INSERTED)
        # SIM7080G answers with the bare number; u-blox with a prefix.
        return ([self.sim.iccid] if self.dialect == "sim7080" else [f"+CCID: {self.sim.iccid}"]), "OK"

    def _h_cpsms(self, sep, args):
        if sep == "=":
            self.psm = ",".join(f'"{a}"' if i >= 3 and a else a for i, a in enumerate(args))
            return [], "OK"
        return [f"+CPSMS: {self.psm}"], "OK"

    def _h_cedrxs(self, sep, args):
        if sep == "=":
            self.edrx = ",".join(args)
            return [], "OK"
        return [f"+CEDRXS: {self.edrx}"], "OK"

    def _h_cgdcont(self, sep, args):
        if sep == "?":
            return [f'+CGDCONT: {c},"IP","{p["apn"]}"' for c, p in sorted(self.pdp.items())], "OK"
        self.pdp.setdefault(int(args[0]), {})["apn"] = args[2] if len(args) > 2 else ""
        return [], "OK"

    def _h_cgerep(self, sep, args):
        if sep == "?":
            return [f"+CGEREP: {self.settings.get('cgerep', '0')},0"], "OK"
        self.settings["cgerep"] = args[0]
        return [], "OK"

    def _h_cgauth(self, sep, args):
        self._set_auth(int(args[0]), args[2:4])
        return [], "OK"

    def _set_auth(self, cid: int, creds: list[str]) -> None:
        # Recorded for tests as pdp[cid]["user"] / ["password"], whatever the vendor's syntax.
        user, password = (creds + ["", ""])[:2]
        self.pdp.setdefault(cid, {}).update(user=user, password=password)

    def _activate(self, cid: int):
        self._need_sim()
        if self.stat not in (1, 5):
            raise _AtError(CME_NO_NETWORK)
        wanted = self.network.credentials
        ctx = self.pdp.get(cid, {})
        if wanted is not None and (ctx.get("user", ""), ctx.get("password", "")) != tuple(wanted):
            raise _AtError(CME_PDP_AUTH_FAILURE)
        self.pdp_active.add(cid)

    def _h_cgact(self, sep, args):
        if sep == "?":
            return [f"+CGACT: {c},{int(c in self.pdp_active)}" for c in sorted(self.pdp)], "OK"
        cid = int(args[1]) if len(args) > 1 else 1
        if args[0] == "1":
            self._activate(cid)
        else:
            self.pdp_active.discard(cid)
        return [], "OK"

    def _pin_counts(self) -> tuple[int, int]:
        if self.sim is None:
            raise _AtError(CME_SIM_NOT_INSERTED)
        return self.sim.pin_left, self.sim.puk_left

    # ---- dialect handlers --------------------------------------------------------------------
    def _dialect_handlers(self) -> dict:
        return getattr(self, "_h_" + self.dialect.replace("-", "_"))()

    def _h_nrf91(self) -> dict:
        def xiccid(sep, args):
            if self.sim is None:
                raise _AtError(CME_SIM_NOT_INSERTED)
            return [f"%XICCID: {self.sim.iccid}"], "OK"

        def cpinr(sep, args):
            pin, puk = self._pin_counts()
            which = args[0].upper()
            return [f'+CPINR: "{which}",{pin if which == "SIM PIN" else puk}'], "OK"

        def xsocket(sep, args):
            if args[0] == "1":
                ident = min(set(range(8)) - set(self.sockets))
                self._open_socket(ident)
                return [f"#XSOCKET: {ident},2,17"], "OK"
            raise _AtError(CME_NOT_SUPPORTED)

        def xbind(sep, args):
            ident, port = int(args[0]), int(args[1])
            self.sockets[ident].sock.close()
            self._open_socket(ident, port)
            return [], "OK"

        def xsendto(sep, args):
            ident, mode, _flags, host, port, data = (
                int(args[0]),
                args[1],
                args[2],
                args[3],
                int(args[4]),
                args[5],
            )
            payload = bytes.fromhex(data) if mode == "1" else data.encode("latin-1")
            self._udp_send(ident, payload, host, port)
            return [f"#XSENDTO: {len(payload)}"], "OK"

        def xrecvfrom(sep, args):
            item = self._pop(int(args[0]))
            if item is None:
                return [f'#XRECVFROM: {args[0]},1,0,"",0'], "OK"
            data, host, port = item
            return [f'#XRECVFROM: {args[0]},1,{len(data)},"{host}",{port}', data.hex()], "OK"

        def xclose(sep, args):
            self._close_socket(int(args[0]))
            return [f"#XCLOSE: {args[0]},0"], "OK"

        return {
            "%XICCID": xiccid,
            "+CPINR": cpinr,
            "#XSOCKET": xsocket,
            "#XBIND": xbind,
            "#XAPOLL": lambda sep, a: ([], "OK"),
            "#XRESET": lambda sep, a: ([], "OK", self._reboot),
            "#XSENDTO": xsendto,
            "#XRECVFROM": xrecvfrom,
            "#XCLOSE": xclose,
        }

    def _h_bg96(self) -> dict:
        def qccid(sep, args):
            if self.sim is None:
                raise _AtError(CME_SIM_NOT_INSERTED)
            return [f"+QCCID: {self.sim.iccid}"], "OK"

        def qpinc(sep, args):
            pin, puk = self._pin_counts()
            return [f'+QPINC: "SC",{pin},{puk}'], "OK"

        def qicfg(sep, args):
            self.settings["qicfg." + args[0]] = ",".join(args[1:])
            return [], "OK"

        def qicsgp(sep, args):
            self.pdp.setdefault(int(args[0]), {})["apn"] = args[2]
            self._set_auth(int(args[0]), args[3:5])
            return [], "OK"

        def qiact(sep, args):
            if sep == "?":
                return [f'+QIACT: {c},1,1,"10.0.0.2"' for c in sorted(self.pdp_active)], "OK"
            self._activate(int(args[0]))
            return [], "OK"

        def qideact(sep, args):
            self.pdp_active.discard(int(args[0]))
            return [], "OK"

        def qiopen(sep, args):
            ident, service, lport = int(args[1]), args[2], int(args[5]) if len(args) > 5 else 0
            if ident in self.sockets or service != "UDP SERVICE":
                raise _AtError(CME_NOT_ALLOWED)
            err = 0
            if not self.pdp_active:
                err = 565  # PDP context not activated... close enough to Quectel's table
            else:
                self._open_socket(ident, lport)

            def opened():
                self._after(self.delays.socket_open_s, lambda: self._urc(f"+QIOPEN: {ident},{err}"))

            return [], "OK", opened

        def qisend(sep, args):
            ident, size, host, port = int(args[0]), int(args[1]), args[2], int(args[3])

            def then(data: bytes):
                try:
                    self._udp_send(ident, data, host, port)
                except _AtError:
                    return [], "SEND FAIL"
                return [], "SEND OK"

            if ident not in self.sockets:
                raise _AtError(CME_NOT_ALLOWED)
            return _Prompt(size, then)

        def qird(sep, args):
            item = self._pop(int(args[0]))
            if item is None:
                return ["+QIRD: 0"], "OK"
            data, host, port = item
            hexmode = self.settings.get("qicfg.dataformat", "0,0").endswith("1")
            body = data.hex() if hexmode else data.decode("latin-1")
            return [f'+QIRD: {len(data)},"{host}",{port}', body], "OK"

        def qiclose(sep, args):
            self._close_socket(int(args[0]))
            return [], "OK"

        return {
            "+QCCID": qccid,
            "+QPINC": qpinc,
            "+QICFG": qicfg,
            "+QICSGP": qicsgp,
            "+QIACT": qiact,
            "+QIDEACT": qideact,
            "+QIOPEN": qiopen,
            "+QISEND": qisend,
            "+QIRD": qird,
            "+QICLOSE": qiclose,
        }

    def _h_sim7080(self) -> dict:
        def spic(sep, args):
            pin, puk = self._pin_counts()
            return [f"+SPIC: {pin},{puk},3,10"], "OK"

        def cncfg(sep, args):
            self.pdp.setdefault(int(args[0]), {})["apn"] = args[2]
            self._set_auth(int(args[0]), args[3:5])
            return [], "OK"

        def cnact(sep, args):
            if sep == "?":
                return [
                    f'+CNACT: {c},{int(c in self.pdp_active)},"10.0.0.2"' for c in sorted(self.pdp or {0: {}})
                ], "OK"
            cid = int(args[0])
            if args[1] == "1":
                self._activate(cid)
                return (
                    [],
                    "OK",
                    lambda: self._after(self.delays.pdp_s, lambda: self._urc(f"+APP PDP: {cid},ACTIVE")),
                )
            self.pdp_active.discard(cid)
            return [], "OK", lambda: self._urc(f"+APP PDP: {cid},DEACTIVE")

        def caopen(sep, args):
            ident, host, port = int(args[1]), args[3], int(args[4])
            if ident in self.sockets:
                raise _AtError(CME_NOT_ALLOWED)
            if not self.pdp_active:
                return [f"+CAOPEN: {ident},1"], "OK"
            s = self._open_socket(ident)
            s.remote = (host, port)
            return [f"+CAOPEN: {ident},0"], "OK"

        def casend(sep, args):
            ident, size = int(args[0]), int(args[1])
            s = self.sockets.get(ident)
            if s is None:
                raise _AtError(CME_NOT_ALLOWED)

            def then(data: bytes):
                try:
                    self._udp_send(ident, data, *s.remote)
                except _AtError:
                    return [], "ERROR"
                return [], "OK"

            return _Prompt(size, then)

        def carecv(sep, args):
            item = self._pop(int(args[0]))
            if item is None:
                return ["+CARECV: 0"], "OK"
            data = item[0][: int(args[1])]
            # Raw bytes straight after the comma: the reply line is binary.
            return [f"+CARECV: {len(data)},{data.decode('latin-1')}"], "OK"

        def caclose(sep, args):
            self._close_socket(int(args[0]))
            return [], "OK"

        return {
            "+SPIC": spic,
            "+CNCFG": cncfg,
            "+CNACT": cnact,
            "+CAOPEN": caopen,
            "+CASEND": casend,
            "+CARECV": carecv,
            "+CACLOSE": caclose,
        }

    def _h_sara_r4(self) -> dict:
        def upincnt(sep, args):
            pin, puk = self._pin_counts()
            return [f"+UPINCNT: {pin},3,{puk},10"], "OK"

        def udconf(sep, args):
            self.settings["udconf." + args[0]] = ",".join(args[1:])
            return [], "OK"

        def usocr(sep, args):
            if args[0] != "17":
                raise _AtError(CME_NOT_SUPPORTED)
            ident = min(set(range(7)) - set(self.sockets))
            self._open_socket(ident, int(args[1]) if len(args) > 1 else 0)
            return [f"+USOCR: {ident}"], "OK"

        def usost(sep, args):
            ident, host, port, size = int(args[0]), args[1], int(args[2]), int(args[3])
            if ident not in self.sockets:
                raise _AtError(CME_NOT_ALLOWED)

            def then(data: bytes):
                try:
                    self._udp_send(ident, data, host, port)
                except _AtError as e:
                    return [], e.final(self.cmee)
                return [f"+USOST: {ident},{len(data)}"], "OK"

            return _Prompt(size, then)

        def usorf(sep, args):
            ident = int(args[0])
            item = self._pop(ident)
            if item is None:
                return [f'+USORF: {ident},"",0,0,""'], "OK"
            data, host, port = item
            hexmode = self.settings.get("udconf.1") == "1"
            body = data.hex() if hexmode else data.decode("latin-1")
            return [f'+USORF: {ident},"{host}",{port},{len(data)},"{body}"'], "OK"

        def usocl(sep, args):
            self._close_socket(int(args[0]))
            return [], "OK"

        return {
            "+UPINCNT": upincnt,
            "+UDCONF": udconf,
            "+USOCR": usocr,
            "+USOST": usost,
            "+USORF": usorf,
            "+USOCL": usocl,
        }


class _AtError(Exception):
    """A handler's error: +CME ERROR: code (or ERROR when +CMEE is 0 or code is None)."""

    def __init__(self, code: int | None):
        super().__init__(code)
        self.code = code

    def final(self, cmee: int) -> str:
        if self.code is None or cmee == 0:
            return "ERROR"
        return f"+CME ERROR: {self.code}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="An emulated cellular modem on a pty.")
    parser.add_argument("--dialect", choices=DIALECTS, default="bg96")
    parser.add_argument("--zero-delays", action="store_true", help="answer at once (tests, benches)")
    parser.add_argument("--registration-delay", type=float, default=2.0, help="seconds to register")
    parser.add_argument("--roaming", action="store_true")
    parser.add_argument("--deny", action="store_true", help="the network rejects the attach")
    parser.add_argument("--pin", help="enable the SIM PIN lock with this PIN")
    parser.add_argument("--state", help="keep the SIM's PIN, lock and counters in this file across restarts")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every command")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    new_sim = {"pin": args.pin, "pin_enabled": True} if args.pin else {}
    if args.state:  # a SIM keeps its state across power cycles (cgsim.simstate); --pin only shapes a new one
        from cgsim import simstate

        try:
            sim = simstate.persistent_sim(args.state, **new_sim)
        except (OSError, simstate.SimStateError) as e:
            parser.error(f"--state: {e}")
    else:
        sim = Sim(**new_sim)
    network = Network(
        registration_delay_s=0 if args.zero_delays else args.registration_delay,
        roaming=args.roaming,
        deny=args.deny,
    )
    emu = ModemEmulator(
        args.dialect, sim=sim, network=network, delays=Delays.zero() if args.zero_delays else Delays()
    )
    path = emu.start()
    print(
        f"{args.dialect} modem emulator on {path}  (reset wire: udp 127.0.0.1:{emu.reset_port})", flush=True
    )
    print(
        "talk to it with e.g. `python -m serial.tools.miniterm " + path + " 115200`; Ctrl-C stops", flush=True
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
