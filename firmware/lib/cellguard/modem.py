# One modem driver for four modem families: the 3GPP TS 27.007 base here, the vendor differences
# in cellguard.dialects. Every step is its own method (identity, SIM state, PIN, lock, APN, PDP,
# registration, sockets) so the SIM-lock logic can inspect and order them.
#
#   from cellguard import at, board, dialects, modem      (as modemstatus.open_modem does)
#   profile = board.load(); d = dialects.get(profile.dialect)
#   engine = at.AtEngine(profile.open_uart(), d.line_buffer(), reset_pin=profile.reset_modem(),
#                        power_key=profile.power_key(), boot_urcs=d.boot_urcs)
#   m = modem.Modem(engine, d)
#   m.power_up(); m.wait_registered(180000); m.set_apn("iot.example"); m.activate_pdp()
#   sock = m.open_udp(); sock.sendto(b"hi", "192.0.2.1", 5683); sock.recvfrom(5000)
from cellguard import identity, runtime

try:  # the status registry (board layer); the driver works without it
    from cellguard import status as _status
except ImportError:
    _status = None
from cellguard.at import (
    AtCommandError,
    AtEngine,
    AtTimeout,
    CmeError,
    ModemError,
    ModemRebooted,
    _text,
    field_int,
    field_start,
    fields,
    parses_reply,
)

# +CEREG <stat> values (3GPP TS 27.007 7.2)
NOT_REGISTERED = 0
HOME = 1
SEARCHING = 2
DENIED = 3
UNKNOWN = 4
ROAMING = 5

# +CME ERROR codes the driver interprets (3GPP TS 27.007 9.2.1)
CME_SIM_NOT_INSERTED = 10
CME_SIM_PIN_REQUIRED = 11
CME_SIM_PUK_REQUIRED = 12
CME_SIM_FAILURE = 13
CME_INCORRECT_PASSWORD = 16


class RegistrationDenied(ModemError):
    """The network rejected the attach (+CEREG stat 3)."""


class RegistrationTimeout(ModemError):
    """Not registered before the deadline; .last_stat is the last +CEREG stat seen."""

    def __init__(self, msg, last_stat):
        super().__init__(msg)
        self.last_stat = last_stat


class SimError(ModemError):
    """The SIM is absent, failed, or needs a PIN/PUK before the operation; .state says which."""

    def __init__(self, state):
        super().__init__("SIM " + state)
        self.state = state


class SocketError(ModemError):
    """A UDP socket operation failed (open, send, closed socket, datagram too large)."""


def _is_cereg_urc(buf, n):
    # "+CEREG: <stat>[,<tac>,...]" is the URC; "+CEREG: <n>,<stat>[,...]" the read reply.
    pos = field_start(buf, n, 1)
    return pos < 0 or pos >= n or not (48 <= buf[pos] <= 57)


# 3GPP TS 24.008 10.5.7.4a (T3412 extended) and 10.5.7.3 (T3324): (unit bits, seconds per step)
_T3412_UNITS = (
    (0b011, 2),
    (0b100, 30),
    (0b101, 60),
    (0b000, 600),
    (0b001, 3600),
    (0b010, 36000),
    (0b110, 1152000),
)
_T3324_UNITS = ((0b000, 2), (0b001, 60), (0b010, 360))


def encode_timer(seconds, units):
    """Smallest-unit GPRS timer byte as an 8-character bit string, e.g. "00100001"."""
    for bits, step in units:
        value = (seconds + step - 1) // step
        if value < 32:
            return "{:03b}{:05b}".format(bits, value)
    raise ValueError("timer too long")


class Modem:
    """The driver. engine: an AtEngine (or a stream, wrapped). dialect: a cellguard.dialects one."""

    def __init__(self, engine, dialect, log=None):
        if not isinstance(engine, AtEngine):
            engine = AtEngine(engine, dialect.line_buffer(), boot_urcs=dialect.boot_urcs, log=log)
        else:
            engine._boot_urcs = dialect.boot_urcs
        engine.reset_cmd = dialect.reset_cmd
        self.at = engine
        self.dialect = dialect
        self._log = log
        self.reg_stat = NOT_REGISTERED
        self.sim_event = False  # a +CPIN: URC arrived (SIM removed/inserted)
        self.cfun_events = 0
        self.other_urcs = 0  # URCs dispatched and ignored (dialect.info_urcs: time zone, RRC state)
        self.boot_line_window_ms = 10000  # boot lines this soon after a restart belong to it
        self.session = 0  # incremented by each init(): sockets opened before are gone
        self.attach_timeout_ms = 180000
        self.pdp_timeout_ms = 150000
        self.socket_open_timeout_ms = 150000
        self._apn = None
        self._want_pdp = False
        self._handles = []
        self.socket_op = False
        # Called before every data session is opened or reopened (activate_pdp, and restore()
        # after a restart); it raises to refuse one. The application sets the SIM lock's gate
        # here (SimLock.require), so no path - not even the driver's own recovery - opens a PDP
        # context without the lock passing since the modem last (re)started.
        self.data_gate = None
        engine.add_urc(b"+CEREG:", self._cereg, _is_cereg_urc)
        engine.add_urc(b"+CPIN:", self._cpin)
        # "+CFUN: 1" follows RDY on Quectel/SIMCom boots. RDY already marks the restart; if RDY was
        # lost (noise, a boot while the UART was down) an unsolicited "+CFUN: 1" while no command
        # runs marks it instead (AT+CFUN? still gets its reply: prefix routing).
        engine.add_urc(b"+CFUN:", self._cfun)
        for prefix, handler in dialect.urcs():
            engine.add_urc(prefix, handler)
        for line in dialect.late_boot_urcs:
            engine.add_urc(line, self._late_boot)
        for prefix in dialect.info_urcs:
            engine.add_urc(prefix, self._other)

    # -- URC handlers (called with the engine's shared line buffer; they allocate nothing)
    def _cereg(self, buf, n):
        self.reg_stat = field_int(buf, n, 0, NOT_REGISTERED)

    def _cpin(self, buf, n):
        self.sim_event = True

    def _other(self, buf, n):
        self.other_urcs += 1

    def _late_boot(self, buf, n):
        # SIMCom's "SMS Ready", Quectel's "APP RDY": printed only by a restart, after its boot
        # URC. Soon after a restart already seen they are part of it; otherwise the boot URC was
        # lost and this is the restart (a running command raises ModemRebooted, not a timeout).
        at = self.at
        if not at.rebooted and not at.restarted_within(self.boot_line_window_ms):
            at._reboot_seen()

    def _cfun(self, buf, n):
        self.cfun_events += 1
        at = self.at
        if at.busy() or at.rebooted or field_int(buf, n, 0) != 1:
            return
        # A real BG96 prints it seconds after RDY, maybe after we re-initialised: the same boot.
        if not at.restarted_within(self.boot_line_window_ms):
            at._reboot_seen()  # the next command or socket call re-initialises

    # -- errors the dialects raise through the driver
    def socket_error(self, msg):
        return SocketError(msg)

    def modem_error(self, msg):
        return ModemError(msg)

    def _note(self, text):
        if self._log:
            self._log(text)
        if _status is not None:
            _status.log("modem: " + text)

    def _publish(self):
        # For the console: registration and health, never identities or secrets.
        if _status is not None:
            _status.set("modem", "dialect", self.dialect.name)
            _status.set("modem", "registration", self.reg_stat)
            _status.set("modem", "recoveries", self.at.recoveries)
            _status.set("modem", "reboots", self.at.reboots)
            _status.set("modem", "line_overflows", self.at.reader.overflows)

    def poll(self, timeout_ms=0):
        """Handle whatever the modem sent (URCs) without a command; for the firmware's main loop."""
        self.at.poll(timeout_ms)

    def close(self):
        self.at.close()

    # -- command path with recovery
    def cmd(self, cmd, timeout_ms=None, prefix=None, payload=None, prompt=b">", raw_prefix=None, retry=True,
            raw_field=0):
        """One AT command through the engine. After a timeout or a modem reboot: recover (resync,
        CFUN reset, reset pin), re-initialise, and retry once if `retry`."""
        if self.at.rebooted and self.session:
            self.init()
        try:
            return self.at.command(cmd, timeout_ms, prefix, payload, prompt, raw_prefix, raw_field)
        except (AtTimeout, ModemRebooted) as e:
            self._note("%s: recovering" % e)
            self.recover()
            # Socket commands are not retried here: after a restart their handle is gone, and
            # UdpSocket reopens it first (self.socket_op is set around them).
            if not retry or payload is not None or self.socket_op:
                raise
            return self.at.command(cmd, timeout_ms, prefix, payload, prompt, raw_prefix, raw_field)

    def recover(self):
        """Bring a stuck or restarted modem back to a known, initialised state (or raise
        ModemUnresponsive). Returns the recovery step that worked."""
        step = "reboot" if self.at.rebooted else self.at.recover()
        if step != "resync":  # the modem restarted: its settings, PDP and sockets are gone
            self.init()
        self._note("recovered by " + step)
        self._publish()
        return step

    def power_up(self):
        """Switch the modem on and initialise it: if nothing answers AT, pulse the board's power
        key (the engine's power_key) until it does; then init(), which turns the radio on. Never
        pulses a modem that answers (a power key toggles: that would switch it off)."""
        at = self.at
        synced = False
        if at.power_key is not None:
            synced = at.resync()
            if not synced:
                self._note("no answer to AT: switching the modem on")
                synced = at.power_cycle()  # if that fails too, init() runs the recovery ladder
        self.init(synced)

    def init(self, synced=False):
        """Echo off, numeric +CME errors, registration URCs, dialect setup, radio on. Idempotent.
        A restart or a lost reply in the middle is recovered from once. synced: the modem has just
        answered AT (power_up), so the first resync is skipped."""
        try:
            self._init(synced)
        except (AtTimeout, ModemRebooted) as e:
            self._note("init: %s; recovering" % e)
            if not self.at.rebooted:
                self.at.recover()
            self._init()

    def _init(self, synced=False):
        at = self.at
        at.echo_off = False
        at.rebooted = False
        if not synced and not at.resync():
            at.recover()
            at.rebooted = False
        at.command(b"ATE0")
        at.echo_off = True
        at.command(b"AT+CMEE=1")
        at.command(b"AT+CEREG=2")
        for c in self.dialect.setup:
            at.command(c)
        self._radio_on(at)
        self.dialect.rx_ready[:] = bytes(len(self.dialect.rx_ready))
        self.dialect.closed[:] = bytes(len(self.dialect.closed))
        self._handles = []
        self.session += 1

    def _radio_on(self, at):
        # The nRF SLM starts (and restarts) with the radio off (CFUN=0); so does any modem left in
        # flight mode. Without CFUN=1 it would never register.
        for line in at.command(b"AT+CFUN?", prefix=b"+CFUN:"):
            if line.startswith(b"+CFUN:") and field_int(line, len(line), 0) == 1:
                return
        at.command(b"AT+CFUN=1")

    # -- identity
    @parses_reply
    def _identity(self, cmd, kind):
        # The reply line that is a valid identity of this kind (after an optional "+XXX:" prefix
        # and quotes; an ICCID may end in an F filler nibble). Any other line - noise, a URC the
        # engine does not know - is skipped, never taken for it; no valid line: IdentityInvalid.
        for line in self.cmd(cmd):
            text = _text(line).strip()
            colon = text.find(":")
            if colon >= 0:
                text = text[colon + 1 :].strip()
            text = text.strip('"')
            if kind == identity.ICCID:
                text = text.rstrip("Ff")
            if identity.valid(kind, text):
                return text
        raise identity.IdentityInvalid(kind, cmd)

    def imei(self):
        """The modem's IMEI (15 digits, Luhn), or IdentityInvalid."""
        return self._identity(self.dialect.imei_cmd, identity.IMEI)

    def iccid(self):
        """The SIM's ICCID (19-20 digits, Luhn), or IdentityInvalid."""
        return self._identity(self.dialect.iccid_cmd, identity.ICCID)

    def imsi(self):
        """The SIM's IMSI (15 digits), or IdentityInvalid."""
        return self._identity(b"AT+CIMI", identity.IMSI)

    @parses_reply
    def _value(self, cmd, prefix):
        for line in self.cmd(cmd, prefix=prefix):
            if line.startswith(prefix):
                return fields(line)[0]
        raise ModemError("no %s reply" % _text(prefix))

    # -- SIM
    @parses_reply
    def sim_state(self):
        """'READY', 'SIM PIN', 'SIM PUK' (or another +CPIN: word), or 'ABSENT' / 'FAILURE'."""
        try:
            return self._value(b"AT+CPIN?", b"+CPIN:")
        except CmeError as e:
            if e.code == CME_SIM_NOT_INSERTED:
                return "ABSENT"
            if e.code == CME_SIM_FAILURE:
                return "FAILURE"
            raise

    def enter_pin(self, pin):
        """AT+CPIN="<pin>". A wrong PIN raises CmeError with code 16 (12 once the PUK is needed)."""
        from cellguard.dialects import _q

        self.cmd(b"AT+CPIN=" + _q(pin), retry=False)

    def enter_puk(self, puk, new_pin):
        from cellguard.dialects import _q

        self.cmd(b"AT+CPIN=" + _q(puk) + b"," + _q(new_pin), retry=False)

    @parses_reply
    def pin_retries(self):
        """(PIN attempts left, PUK attempts left), or None if the dialect cannot tell."""
        return self.dialect.pin_retries(self)

    @parses_reply
    def pin_lock_enabled(self):
        line = self.cmd(b'AT+CLCK="SC",2', prefix=b"+CLCK:")
        for item in line:
            if item.startswith(b"+CLCK:"):
                return fields(item)[0] == "1"
        raise ModemError("no +CLCK reply")

    def set_pin_lock(self, enabled, pin):
        """AT+CLCK="SC",<1|0>,"<pin>": require (or stop requiring) the PIN at power-up."""
        from cellguard.dialects import _q

        self.cmd(b'AT+CLCK="SC",' + (b"1," if enabled else b"0,") + _q(pin), retry=False)

    def change_pin(self, old, new):
        from cellguard.dialects import _q

        self.cmd(b'AT+CPWD="SC",' + _q(old) + b"," + _q(new), retry=False)

    # -- registration
    @parses_reply
    def registration(self):
        """Query +CEREG? now; returns the stat (HOME, ROAMING, SEARCHING, DENIED, ...)."""
        for line in self.cmd(b"AT+CEREG?", prefix=b"+CEREG:"):
            if line.startswith(b"+CEREG:"):
                self.reg_stat = int(fields(line)[1])
        return self.reg_stat

    def wait_registered(self, timeout_ms, backoff_ms=250, max_backoff_ms=8000):
        """Wait for +CEREG home (returns 'home') or roaming ('roaming'). URCs wake it at once;
        between them it asks AT+CEREG? with exponential backoff in case a URC was lost.
        Raises RegistrationDenied, SimError (no usable SIM) or RegistrationTimeout."""
        deadline = runtime.ticks_add(runtime.ticks_ms(), timeout_ms)
        stat = self.registration()
        while True:
            self._publish()
            if stat == HOME:
                return "home"
            if stat == ROAMING:
                return "roaming"
            if stat == DENIED:
                raise RegistrationDenied("registration denied by the network")
            if stat == NOT_REGISTERED or self.sim_event:
                self.sim_event = False
                state = self.sim_state()
                if state != "READY":
                    raise SimError(state)
            left = runtime.ticks_diff(deadline, runtime.ticks_ms())
            if left <= 0:
                raise RegistrationTimeout("not registered after %d ms" % timeout_ms, stat)
            before = self.reg_stat
            self.at.wait_for(lambda: self.reg_stat != before, min(left, backoff_ms))
            backoff_ms = min(backoff_ms * 2, max_backoff_ms)
            stat = self.reg_stat if self.reg_stat != before else self.registration()

    # -- PDP
    def set_apn(self, apn, user=None, pwd=None):
        self.dialect.set_apn(self, apn, user, pwd)
        self._apn = (apn, user, pwd)

    def _pass_gate(self):
        if self.data_gate is not None:
            self.data_gate()

    def activate_pdp(self):
        self._pass_gate()
        self.dialect.activate_pdp(self)
        self._want_pdp = True

    def deactivate_pdp(self):
        self._want_pdp = False
        self.dialect.deactivate_pdp(self)

    @parses_reply
    def pdp_active(self):
        return self.dialect.pdp_active(self)

    def restore(self):
        """After a modem restart: pass the data gate, register again, bring back the APN and PDP
        context. The gate runs first: whatever the gate raises (the SIM lock's LockedOut) leaves
        the modem without a data session and reaches the socket's caller."""
        self._pass_gate()
        if not self._want_pdp:
            return
        self.wait_registered(self.attach_timeout_ms)
        if self._apn is not None:
            self.dialect.set_apn(self, *self._apn)
        self.dialect.activate_pdp(self)

    # -- signal and power saving
    @parses_reply
    def signal(self):
        """{'rsrp_dbm', 'rsrq_db', 'rssi_dbm'}; None where the modem reports 'unknown'."""
        out = {"rsrp_dbm": None, "rsrq_db": None, "rssi_dbm": None}
        for line in self.cmd(b"AT+CESQ", prefix=b"+CESQ:"):
            if line.startswith(b"+CESQ:"):
                f = fields(line)
                rsrq, rsrp = int(f[4]), int(f[5])
                if rsrp != 255:
                    out["rsrp_dbm"] = rsrp - 141
                if rsrq != 255:
                    out["rsrq_db"] = rsrq / 2 - 20
        for line in self.cmd(b"AT+CSQ", prefix=b"+CSQ:"):
            if line.startswith(b"+CSQ:"):
                rssi = int(fields(line)[0])
                if rssi != 99:
                    out["rssi_dbm"] = -113 + 2 * rssi
        return out

    def set_psm(self, enabled, tau_s=3600, active_s=60):
        """AT+CPSMS: request PSM with a periodic TAU and an active time (seconds)."""
        if not enabled:
            self.cmd(b"AT+CPSMS=0")
            return
        tau = encode_timer(tau_s, _T3412_UNITS)
        active = encode_timer(active_s, _T3324_UNITS)
        self.cmd(('AT+CPSMS=1,,,"%s","%s"' % (tau, active)).encode())

    @parses_reply
    def psm(self):
        return fields(self.cmd(b"AT+CPSMS?", prefix=b"+CPSMS:")[0])

    def set_edrx(self, enabled, act=4, value="0101"):
        """AT+CEDRXS: act 4 = LTE-M, 5 = NB-IoT; value = the 4-bit eDRX cycle (TS 24.008)."""
        if not enabled:
            self.cmd(b"AT+CEDRXS=0," + str(act).encode())
            return
        if len(value) != 4 or value.strip("01"):
            raise ValueError("eDRX value is 4 bits")
        self.cmd(('AT+CEDRXS=2,%d,"%s"' % (act, value)).encode())

    # -- sockets
    def free_handle(self, limit):
        for h in range(limit):
            if h not in self._handles:
                return h
        raise SocketError("no free socket")

    def open_udp(self, local_port=0):
        """A UDP socket: sendto(data, host, port), recvfrom(timeout_ms), close()."""
        return UdpSocket(self, local_port)


class UdpSocket:
    """A datagram socket on the modem (the interface of docs/modem.md, "Datagram sockets").

    If the modem restarts underneath it, the next call passes the modem's data gate (the SIM lock,
    when the application set one), re-registers, re-activates the PDP context and reopens the
    socket (bounded by the modem's attach timeout) instead of failing forever. If the modem
    closes it on its own and says so (+UUSOCL, +CASTATE, +QIURC: "closed", #XSOCKET ... closed),
    the next call reopens it.
    """

    def __init__(self, modem, local_port=0):
        self._m = modem
        self._local_port = local_port
        self._h = None
        self._session = -1
        self.closed = False
        self._ensure()

    def _ensure(self):
        if self.closed:
            raise SocketError("socket is closed")
        m = self._m
        if m.at.rebooted:
            m.recover()
        if m.dialect.pdp_lost and m._want_pdp:
            # The network dropped the PDP context and the sockets with it: re-activate, reopen.
            m.dialect.pdp_lost = False
            m._note("PDP context lost: re-activating")
            self._release()
            m.session += 1
        h = self._h
        if self._session == m.session and h is not None and m.dialect.closed[h]:
            m.dialect.closed[h] = 0
            m._note("socket closed by the modem: reopening")
            self._release()
            self._session = -2  # reopen below, without a restart to recover from
        if self._session != m.session:
            # Reopened after a restart: restore() passes the data gate, registers and brings the
            # PDP context back. The first open passes the gate too: a modem that restarted since
            # the context was opened must not get a socket before the lock has run again.
            if self._session >= 0:
                m.restore()
            elif self._session == -1:
                m._pass_gate()
            try:
                self._h = m.dialect.sock_open(m, self._local_port)
            except (ValueError, IndexError, TypeError, AttributeError) as e:
                raise SocketError("unexpected reply opening a socket: %r" % (e,))
            m._handles.append(self._h)
            self._session = m.session
        return self._h

    def sendto(self, data, host, port):
        m = self._m
        if len(data) > m.dialect.max_datagram:
            raise SocketError("datagram of %d bytes exceeds %d" % (len(data), m.dialect.max_datagram))
        for attempt in (0, 1):
            h = self._ensure()
            m.socket_op = True
            try:
                m.dialect.sock_send(m, h, data, host, port)
                return len(data)
            except (AtTimeout, ModemRebooted) as e:
                # m.cmd has recovered the modem already; _ensure reopens the socket if it restarted.
                if attempt:
                    raise SocketError("send failed: %s" % e)
            except AtCommandError as e:
                raise SocketError("send failed: %s" % e)
            except ValueError as e:  # a host that cannot go into a command
                raise SocketError("bad destination: %s" % e)
            finally:
                m.socket_op = False

    def recvfrom(self, timeout_ms):
        """(data, host, port) or None after timeout_ms. Driven by the modem's receive URC, with a
        read every dialect.recv_poll_ms in case a URC was lost."""
        m = self._m
        ready = m.dialect.rx_ready
        deadline = runtime.ticks_add(runtime.ticks_ms(), timeout_ms)
        poll_ms = m.dialect.recv_poll_ms
        first = True
        while True:
            h = self._ensure()
            if ready[h] or first:
                ready[h] = 0
                m.socket_op = True
                try:
                    got = m.dialect.sock_recv(m, h)
                except (AtTimeout, ModemRebooted):
                    got = None  # recovered by m.cmd; the loop reopens the socket if needed
                except AtCommandError as e:
                    raise SocketError("receive failed: %s" % e)
                except (ValueError, IndexError, TypeError, AttributeError) as e:
                    raise SocketError("unexpected receive reply: %r" % (e,))
                finally:
                    m.socket_op = False
                if got is not None:
                    ready[h] = 1  # more may be queued: the next call reads again at once
                    return got
            left = runtime.ticks_diff(deadline, runtime.ticks_ms())
            if left <= 0:
                return None
            closed = m.dialect.closed
            first = not m.at.wait_for(lambda: ready[h] or closed[h], min(left, poll_ms))

    def close(self):
        if self.closed:
            return
        self.closed = True
        if self._session == self._m.session and self._h is not None:
            self._release()

    def _release(self):
        # Free the handle and close it on the modem; a modem that already dropped it may refuse.
        m = self._m
        if self._h in m._handles:
            m._handles.remove(self._h)
        try:
            m.dialect.sock_close(m, self._h)
        except ModemError:
            pass
