"""Quectel BG95/BG96: RDY / +CFUN: 1 / +CPIN: at boot, +QCCID and +QPINC, the PDP context through
+QICSGP / +QIACT, a "UDP SERVICE" socket opened with a +QIOPEN URC, +QISEND with a '>' prompt,
+QIRD receive (hex with AT+QICFG="dataformat",0,1), and +QIURC for data, closes and PDP loss."""

from __future__ import annotations

from ..atcmd import CME_NOT_ALLOWED, AtError, Prompt
from ..dialect import Dialect, register
from ..sim import inserted


@register
class Bg96(Dialect):
    name = "bg96"
    boot_reports_sim = True
    socket_limit = 12
    recv_urc_format = '+QIURC: "recv",{ident}'
    closed_urc_format = '+QIURC: "closed",{ident}'
    pdp_lost_format = '+QIURC: "pdpdeact",{cid}'
    identities = {"IMEI": ("AT+GSN", ""), "ICCID": ("AT+QCCID", "+QCCID: "), "IMSI": ("AT+CIMI", "")}
    restart_banner = ("+QUSIM: 1", "+QIND: SMS DONE", "+QIND: PB DONE", "APP RDY")  # BG95 firmware
    network_urcs = ('+CTZE: "+04",0,"2026/12/06,03:20:00"', "+CREG: {stat}", "+CGREG: {stat}")

    def commands(self):
        m = self.modem
        return {
            "+QCCID": lambda sep, a: ([f"+QCCID: {inserted(m.sim).iccid}"], "OK"),
            "+QPINC": self.qpinc,
            "+QICFG": self.setting("qicfg"),
            "+QICSGP": self.qicsgp,
            "+QIACT": self.qiact,
            "+QIDEACT": self.qideact,
            "+QIOPEN": self.qiopen,
            "+QISEND": self.qisend,
            "+QIRD": self.qird,
            "+QICLOSE": self.qiclose,
        }

    def qpinc(self, sep, args):
        pin, puk = self.modem.pin_counts()
        return [f'+QPINC: "SC",{pin},{puk}'], "OK"

    def qicsgp(self, sep, args):
        self.configure_context(args)
        return [], "OK"

    def qiact(self, sep, args):
        m = self.modem
        if sep == "?":
            return [f'+QIACT: {c},1,1,"10.0.0.2"' for c in sorted(m.pdp_active)], "OK"
        m.activate(int(args[0]))
        return [], "OK"

    def qideact(self, sep, args):
        self.modem.pdp_active.discard(int(args[0]))
        return [], "OK"

    def qiopen(self, sep, args):
        m = self.modem
        ident, service, lport = int(args[1]), args[2], int(args[5]) if len(args) > 5 else 0
        if ident in m.sockets or service != "UDP SERVICE":
            raise AtError(CME_NOT_ALLOWED)
        err = 0
        if not m.pdp_active:
            err = 565  # PDP context not activated... close enough to Quectel's table
        else:
            self.open_socket(ident, lport)

        def opened():
            m._after(m.delays.socket_open_s, lambda: m._urc(f"+QIOPEN: {ident},{err}"))

        return [], "OK", opened

    def qisend(self, sep, args):
        m = self.modem
        ident, size, host, port = int(args[0]), int(args[1]), args[2], int(args[3])
        m.sockets.get_open(ident)

        def then(data: bytes):
            try:
                m.udp_send(ident, data, host, port)
            except AtError:
                return [], "SEND FAIL"
            return [], "SEND OK"

        return Prompt(size, then)

    def qird(self, sep, args):
        m = self.modem
        item = m.sockets.pop_datagram(int(args[0]))
        if item is None:
            return ["+QIRD: 0"], "OK"
        data, host, port = item
        hexmode = m.settings.get("qicfg.dataformat", "0,0").endswith("1")
        body = data.hex() if hexmode else data.decode("latin-1")
        return [f'+QIRD: {len(data)},"{host}",{port}', body], "OK"

    def qiclose(self, sep, args):
        self.close_socket(int(args[0]))
        return [], "OK"
