# Vendor dialects for cellguard.modem: what differs between the four modem families, as data
# (command strings, prefixes, limits) plus small overrides for the socket commands, which no two
# vendors spell alike. The 3GPP base (Dialect) covers everything TS 27.007 standardises.
#
#   nrf91    Nordic nRF9160 Serial LTE Modem (SLM)  hex payloads in the command, #XAPOLL URC
#   bg96     Quectel BG95/BG96                      "UDP SERVICE" socket, '>' prompt, hex receive
#   sim7080  SIMCom SIM7080G                        one remote per socket, '>' prompt, raw receive
#   sara-r4  u-blox SARA-R4/R5                      '@' prompt, hex receive (AT+UDCONF=1,1)
from cellguard.at import CmeError, field_int, fields

MAX_SOCKETS = 16


def _hex(data):
    return bytes(data).hex().encode()


def _q(text):
    # A value put between quotes in a command. User data (APN, PIN, host) must not be able to
    # end the quote or the command line: that would be AT command injection.
    if isinstance(text, bytes):
        text = text.decode()
    for ch in text:
        if ch == '"' or ord(ch) < 32 or ord(ch) > 126:
            raise ValueError("character not allowed in an AT argument")
    return ('"' + text + '"').encode()


def _num(value):
    return str(int(value)).encode()


def _find(lines, prefix):
    for line in lines:
        if line.startswith(prefix):
            return line
    return None


def _after(lines, prefix):
    # The line following the reply line (hex payload lines).
    for i, line in enumerate(lines):
        if line.startswith(prefix) and i + 1 < len(lines):
            return lines[i + 1]
    return None


# URCs that carry nothing the driver acts on, which modems send anyway (a registration report for
# the other radio access technologies, RRC connection state, time zone from the network). They are
# dispatched and counted (Modem.other_urcs), so they never become part of a command's reply: a
# "+CSCON: 1" inside the reply to AT+CIMI is not the IMSI.
_INFO_URCS = (b"+CREG:", b"+CGREG:", b"+CSCON:", b"+CTZV:", b"+CTZE:", b"+CTZEU:")


class Dialect:
    """3GPP TS 27.007 base. A subclass overrides data attributes and the socket methods."""

    name = "3gpp"
    boot_urcs = (b"RDY",)
    # Lines a restart prints after its boot URC and at no other time: if the boot URC was lost,
    # one of these marks the restart (Modem._late_boot); soon after a restart seen they belong to it.
    late_boot_urcs = ()
    info_urcs = _INFO_URCS
    reset_cmd = b"AT+CFUN=1,1"  # software reset, the second step of recovery
    setup = ()  # extra commands after ATE0 / +CMEE=1 / +CEREG=2
    imei_cmd = b"AT+CGSN"
    iccid_cmd = b"AT+CCID"
    pdp_cid = 1
    max_datagram = 1024
    recv_poll_ms = 1000  # re-read a socket this often even without a URC (a URC can be lost)

    def line_buffer(self):
        # The AT engine's line buffer must hold a received datagram as hex plus its reply header.
        return 2 * self.max_datagram + 96

    def __init__(self):
        self.rx_ready = bytearray(MAX_SOCKETS)  # set by receive URCs, allocation-free
        self.closed = bytearray(MAX_SOCKETS)  # set by the modem's socket-closed URCs
        self.pdp_lost = False  # the network deactivated the PDP context (a URC said so)

    def urcs(self):
        """(prefix, handler(buf, n)) for this dialect's URCs: socket data, PDP loss."""
        return ((b"+CGEV:", self._cgev),)

    def _cgev(self, buf, n):
        # 3GPP +CGEV (after AT+CGEREP=1): "+CGEV: NW PDN DEACT <cid>", "+CGEV: ME PDN DEACT <cid>"...
        if buf.find(b"DEACT", 0, n) >= 0:
            self.pdp_lost = True

    def _mark(self, h):
        if 0 <= h < MAX_SOCKETS:
            self.rx_ready[h] = 1

    def _lost(self, h):
        # The modem closed socket h on its own (peer, network): UdpSocket reopens it.
        if 0 <= h < MAX_SOCKETS:
            self.closed[h] = 1

    # -- PDP
    def set_apn(self, m, apn, user, pwd):
        cid = _num(self.pdp_cid)
        m.cmd(b"AT+CGDCONT=" + cid + b',"IP",' + _q(apn))
        if user:
            m.cmd(b"AT+CGAUTH=" + cid + b",1," + _q(user) + b"," + _q(pwd or ""))

    def activate_pdp(self, m):
        m.cmd(b"AT+CGACT=1," + _num(self.pdp_cid))

    def deactivate_pdp(self, m):
        m.cmd(b"AT+CGACT=0," + _num(self.pdp_cid))

    def pdp_active(self, m):
        for line in m.cmd(b"AT+CGACT?", prefix=b"+CGACT:"):
            f = fields(line)
            if f[0] == str(self.pdp_cid):
                return f[1] == "1"
        return False

    def pin_retries(self, m):
        return None

    # -- sockets: handles are small ints; sock_recv returns (data, host, port) or None
    def sock_open(self, m, local_port):
        raise NotImplementedError

    def sock_send(self, m, h, data, host, port):
        raise NotImplementedError

    def sock_recv(self, m, h):
        raise NotImplementedError

    def sock_close(self, m, h):
        raise NotImplementedError


class Nrf91(Dialect):
    name = "nrf91"
    boot_urcs = (b"Ready",)
    reset_cmd = b"AT#XRESET"  # the SLM's own reset; the modem core has no AT+CFUN=1,1
    setup = (b"AT+CGEREP=1",)  # +CGEV PDP events
    iccid_cmd = b"AT%XICCID"
    pdp_cid = 0
    max_datagram = 700  # hex doubles it inside one command line
    info_urcs = _INFO_URCS + (b"%MDMEV:", b"%XTIME:")

    def urcs(self):
        return ((b"#XAPOLL:", self._apoll), (b"+CGEV:", self._cgev), (b"#XSOCKET:", self._xsocket))

    def _apoll(self, buf, n):
        self._mark(field_int(buf, n, 0))

    def _xsocket(self, buf, n):
        # Unsolicited (a running AT#XSOCKET= takes its own reply): '#XSOCKET: <h>,"closed"'.
        if buf.find(b"closed", 0, n) >= 0:
            self._lost(field_int(buf, n, 0))

    def pin_retries(self, m):
        out = []
        for which in (b'"SIM PIN"', b'"SIM PUK"'):
            line = _find(m.cmd(b"AT+CPINR=" + which, prefix=b"+CPINR:"), b"+CPINR:")
            out.append(int(fields(line)[1]))
        return tuple(out)

    def sock_open(self, m, local_port):
        line = _find(m.cmd(b"AT#XSOCKET=1,2,0", prefix=b"#XSOCKET:"), b"#XSOCKET:")
        h = int(fields(line)[0])
        if local_port:
            m.cmd(b"AT#XBIND=" + _num(h) + b"," + _num(local_port))
        m.cmd(b"AT#XAPOLL=1,1," + _num(h))
        return h

    def sock_send(self, m, h, data, host, port):
        m.cmd(
            b"AT#XSENDTO=" + _num(h) + b",1,0," + _q(host) + b"," + _num(port) + b',"' + _hex(data) + b'"',
            prefix=b"#XSENDTO:",
        )

    def sock_recv(self, m, h):
        lines = m.cmd(b"AT#XRECVFROM=" + _num(h) + b",1,0,0", prefix=b"#XRECVFROM:")
        line = _find(lines, b"#XRECVFROM:")
        f = fields(line)
        if int(f[2]) == 0:
            return None
        return bytes.fromhex(_after(lines, b"#XRECVFROM:").decode()), f[3], int(f[4])

    def sock_close(self, m, h):
        m.cmd(b"AT#XCLOSE=" + _num(h), prefix=b"#XCLOSE:")


class Bg96(Dialect):
    name = "bg96"
    boot_urcs = (b"RDY",)
    setup = (b'AT+QICFG="dataformat",0,1',)  # send raw after '>', receive as hex text
    imei_cmd = b"AT+GSN"
    iccid_cmd = b"AT+QCCID"
    max_datagram = 1024
    late_boot_urcs = (b"APP RDY",)  # BG95: the application core is up, seconds after RDY
    info_urcs = _INFO_URCS + (b"+QIND:", b"+QUSIM:")  # +QIND: SMS DONE / PB DONE at boot

    def __init__(self):
        super().__init__()
        self.open_result = bytearray(MAX_SOCKETS)

    def urcs(self):
        return ((b"+QIURC:", self._qiurc), (b"+QIOPEN:", self._qiopen))

    def _qiurc(self, buf, n):
        if buf.find(b'"recv"', 0, n) >= 0:
            self._mark(field_int(buf, n, 1))
        elif buf.find(b'"pdpdeact"', 0, n) >= 0:
            self.pdp_lost = True
        elif buf.find(b'"closed"', 0, n) >= 0:
            self._lost(field_int(buf, n, 1))

    def _qiopen(self, buf, n):
        h = field_int(buf, n, 0)
        if 0 <= h < MAX_SOCKETS:
            self.open_result[h] = min(255, field_int(buf, n, 1, 255) + 1)  # 1 = opened, >1 = error

    def set_apn(self, m, apn, user, pwd):
        m.cmd(
            b"AT+QICSGP=1,1,"
            + _q(apn)
            + b","
            + _q(user or "")
            + b","
            + _q(pwd or "")
            + (b",3" if user else b",0")
        )

    def activate_pdp(self, m):
        m.cmd(b"AT+QIACT=1")

    def deactivate_pdp(self, m):
        m.cmd(b"AT+QIDEACT=1")

    def pdp_active(self, m):
        for line in m.cmd(b"AT+QIACT?", prefix=b"+QIACT:"):
            f = fields(line)
            if f[0] == "1":
                return f[1] == "1"
        return False

    def pin_retries(self, m):
        f = fields(_find(m.cmd(b'AT+QPINC="SC"', prefix=b"+QPINC:"), b"+QPINC:"))
        return int(f[1]), int(f[2])

    def sock_open(self, m, local_port):
        h = m.free_handle(12)
        self.open_result[h] = 0
        cmd = b"AT+QIOPEN=1," + _num(h) + b',"UDP SERVICE","127.0.0.1",0,' + _num(local_port) + b",0"
        try:
            m.cmd(cmd)
        except CmeError:
            # The identity is still open from before the host restarted (the modem did not): a
            # board reset leaves the modem's sockets behind. Close it and open it afresh, once.
            m.cmd(b"AT+QICLOSE=" + _num(h))
            m.cmd(cmd)
        if not m.at.wait_for(lambda: self.open_result[h], m.socket_open_timeout_ms):
            raise m.socket_error("no +QIOPEN result")
        if self.open_result[h] != 1:
            raise m.socket_error("+QIOPEN error %d" % (self.open_result[h] - 1))
        return h

    def sock_send(self, m, h, data, host, port):
        m.cmd(
            b"AT+QISEND=" + _num(h) + b"," + _num(len(data)) + b"," + _q(host) + b"," + _num(port),
            payload=bytes(data),
            prompt=b">",
        )

    def sock_recv(self, m, h):
        lines = m.cmd(b"AT+QIRD=" + _num(h), prefix=b"+QIRD:")
        f = fields(_find(lines, b"+QIRD:"))
        if int(f[0]) == 0:
            return None
        return bytes.fromhex(_after(lines, b"+QIRD:").decode()), f[1], int(f[2])

    def sock_close(self, m, h):
        m.cmd(b"AT+QICLOSE=" + _num(h))


class Sim7080(Dialect):
    # A SIM7080G UDP socket is bound to one remote at AT+CAOPEN: sendto to another remote
    # closes and reopens it (sock_send). The local port is chosen by the modem.
    name = "sim7080"
    boot_urcs = (b"RDY",)
    imei_cmd = b"AT+GSN"
    iccid_cmd = b"AT+CCID"
    pdp_cid = 0
    max_datagram = 1024

    late_boot_urcs = (b"SMS Ready",)  # after RDY, +CFUN: 1 and +CPIN: READY
    info_urcs = _INFO_URCS + (b"DST:", b"*PSUTTZ:")  # time zone from the network

    def __init__(self):
        super().__init__()
        self.remote = [None] * MAX_SOCKETS
        self.pdp_up = False

    def urcs(self):
        return (
            (b"+CADATAIND:", self._dataind),
            (b"+APP PDP:", self._app_pdp),
            (b"+CASTATE:", self._castate),
            (b"+CAOPEN:", self._caopen),
        )

    def _dataind(self, buf, n):
        self._mark(field_int(buf, n, 0))

    def _castate(self, buf, n):
        # "+CASTATE: <id>,<state>": 0 = closed (by the peer or the network).
        if field_int(buf, n, 1) == 0:
            self._gone(field_int(buf, n, 0))

    def _caopen(self, buf, n):
        # A +CAOPEN result after its command was over (the running AT+CAOPEN takes its own):
        # an open that failed late leaves no socket behind.
        if field_int(buf, n, 1) != 0:
            self._gone(field_int(buf, n, 0))

    def _gone(self, h):
        if 0 <= h < MAX_SOCKETS:
            self.remote[h] = None  # the next send opens it again
            self._lost(h)

    def _app_pdp(self, buf, n):
        self.pdp_up = buf.find(b"ACTIVE", 0, n) >= 0 and buf.find(b"DEACTIVE", 0, n) < 0
        if buf.find(b"DEACTIVE", 0, n) >= 0:
            self.pdp_lost = True

    def set_apn(self, m, apn, user, pwd):
        m.cmd(
            b"AT+CNCFG=0,1,"
            + _q(apn)
            + b","
            + _q(user or "")
            + b","
            + _q(pwd or "")
            + (b",3" if user else b",0")
        )

    def activate_pdp(self, m):
        self.pdp_up = False
        m.cmd(b"AT+CNACT=0,1")
        if not m.at.wait_for(lambda: self.pdp_up, m.pdp_timeout_ms):
            raise m.modem_error("no +APP PDP: 0,ACTIVE")

    def deactivate_pdp(self, m):
        m.cmd(b"AT+CNACT=0,0")

    def pdp_active(self, m):
        for line in m.cmd(b"AT+CNACT?", prefix=b"+CNACT:"):
            f = fields(line)
            if f[0] == "0":
                return f[1] == "1"
        return False

    def pin_retries(self, m):
        f = fields(_find(m.cmd(b"AT+SPIC", prefix=b"+SPIC:"), b"+SPIC:"))
        return int(f[0]), int(f[1])

    def sock_open(self, m, local_port):
        h = m.free_handle(13)
        self.remote[h] = None
        return h

    def sock_send(self, m, h, data, host, port):
        if self.remote[h] != (host, port):
            if self.remote[h] is not None:
                self.sock_close(m, h)
            cmd = b"AT+CAOPEN=0," + _num(h) + b',"UDP",' + _q(host) + b"," + _num(port)
            try:
                line = _find(m.cmd(cmd, prefix=b"+CAOPEN:"), b"+CAOPEN:")
            except CmeError:
                line = None
            if line is None or int(fields(line)[1]) != 0:
                # Possibly still open from before the host restarted (the modem did not): close
                # it and open it afresh, once.
                m.cmd(b"AT+CACLOSE=" + _num(h))
                line = _find(m.cmd(cmd, prefix=b"+CAOPEN:"), b"+CAOPEN:")
            if line is None or int(fields(line)[1]) != 0:
                raise m.socket_error("AT+CAOPEN failed: %r" % line)
            self.remote[h] = (host, port)
        m.cmd(b"AT+CASEND=" + _num(h) + b"," + _num(len(data)), payload=bytes(data), prompt=b">")

    def sock_recv(self, m, h):
        if self.remote[h] is None:
            return None
        prefix = b"+CARECV: "
        lines = m.cmd(
            b"AT+CARECV=" + _num(h) + b"," + _num(self.max_datagram), prefix=b"+CARECV:", raw_prefix=prefix
        )
        line = _find(lines, prefix)
        comma = line.find(b",")
        if comma < 0:
            return None
        host, port = self.remote[h]
        return line[comma + 1 :], host, port

    def sock_close(self, m, h):
        if self.remote[h] is not None:
            self.remote[h] = None
            m.cmd(b"AT+CACLOSE=" + _num(h))


class SaraR4(Dialect):
    name = "sara-r4"
    boot_urcs = ()  # SARA prints nothing at boot; the echo coming back reveals a restart
    reset_cmd = b"AT+CFUN=15"  # silent reset with SIM reset (u-blox)
    setup = (b"AT+UDCONF=1,1", b"AT+CGEREP=1")  # hex mode for AT+USORF; +CGEV PDP events
    imei_cmd = b"AT+CGSN"
    iccid_cmd = b"AT+CCID"
    pdp_cid = 1
    max_datagram = 1024

    def urcs(self):
        return ((b"+UUSORF:", self._uusorf), (b"+CGEV:", self._cgev), (b"+UUSOCL:", self._uusocl))

    def _uusorf(self, buf, n):
        self._mark(field_int(buf, n, 0))

    def _uusocl(self, buf, n):
        self._lost(field_int(buf, n, 0))

    def pin_retries(self, m):
        f = fields(_find(m.cmd(b"AT+UPINCNT", prefix=b"+UPINCNT:"), b"+UPINCNT:"))
        return int(f[0]), int(f[2])

    def sock_open(self, m, local_port):
        cmd = b"AT+USOCR=17" + ((b"," + _num(local_port)) if local_port else b"")
        return int(fields(_find(m.cmd(cmd, prefix=b"+USOCR:"), b"+USOCR:"))[0])

    def sock_send(self, m, h, data, host, port):
        m.cmd(
            b"AT+USOST=" + _num(h) + b"," + _q(host) + b"," + _num(port) + b"," + _num(len(data)),
            prefix=b"+USOST:",
            payload=bytes(data),
            prompt=b"@",
        )

    def sock_recv(self, m, h):
        # Hex after AT+UDCONF=1,1 (our setup), raw bytes in quotes otherwise: the engine reads
        # <len> bytes after the quote as they are (raw_field 3), so CR, LF and NUL survive.
        lines = m.cmd(
            b"AT+USORF=" + _num(h) + b"," + _num(self.max_datagram), prefix=b"+USORF:", raw_prefix=b"+USORF: ",
            raw_field=3,
        )
        line = _find(lines, b"+USORF:")
        pos, commas, quoted = 7, 0, False
        while commas < 4 and pos < len(line):  # past "<s>,"<ip>",<port>,<len>,"
            c = line[pos]
            if c == 34:
                quoted = not quoted
            elif c == 44 and not quoted:
                commas += 1
            pos += 1
        f = fields(line[: pos - 1])
        if commas < 4 or int(f[3]) == 0:
            return None
        size, body = int(f[3]), line[pos + 1 : -1]  # between the quotes
        if len(body) == 2 * size:
            body = bytes.fromhex(body.decode())
        elif len(body) != size:
            raise ValueError("+USORF length %d, %d bytes" % (size, len(body)))
        return body, f[1], int(f[2])

    def sock_close(self, m, h):
        m.cmd(b"AT+USOCL=" + _num(h))


DIALECTS = {"nrf91": Nrf91, "bg96": Bg96, "sim7080": Sim7080, "sara-r4": SaraR4}


def get(name):
    """A fresh dialect instance by name (nrf91, bg96, sim7080, sara-r4)."""
    try:
        return DIALECTS[name]()
    except KeyError:
        raise ValueError("unknown modem dialect: %s" % name)
