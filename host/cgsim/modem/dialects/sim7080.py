"""SIMCom SIM7080G: RDY / +CFUN: 1 / +CPIN: at boot, AT+CCID answered with the bare number,
+SPIC PIN counters, the PDP context through +CNCFG / +CNACT (+APP PDP URCs), UDP sockets bound to
one remote at +CAOPEN, +CASEND with a '>' prompt, +CARECV with raw bytes in the reply line, and
+CADATAIND / +CASTATE URCs."""

from __future__ import annotations

from ..atcmd import AtError, Prompt
from ..dialect import Dialect, register


@register
class Sim7080(Dialect):
    name = "sim7080"
    boot_reports_sim = True
    ccid_prefix = ""
    socket_limit = 13
    recv_urc_format = '+CADATAIND: {ident}'
    closed_urc_format = '+CASTATE: {ident},0'
    pdp_lost_format = '+APP PDP: {cid},DEACTIVE'
    identities = {"IMEI": ("AT+GSN", ""), "ICCID": ("AT+CCID", ""), "IMSI": ("AT+CIMI", "")}
    restart_banner = ("SMS Ready",)
    network_urcs = ('*PSUTTZ: 2026,12,6,3,20,0,"+16",0', "DST: 1", "+CTZV: +16,0", "+CGREG: {stat}")

    def commands(self):
        return {
            "+SPIC": self.spic,
            "+CNCFG": self.cncfg,
            "+CNACT": self.cnact,
            "+CAOPEN": self.caopen,
            "+CASEND": self.casend,
            "+CARECV": self.carecv,
            "+CACLOSE": self.caclose,
        }

    def spic(self, sep, args):
        pin, puk = self.modem.pin_counts()
        return [f"+SPIC: {pin},{puk},3,10"], "OK"

    def cncfg(self, sep, args):
        self.configure_context(args)
        return [], "OK"

    def cnact(self, sep, args):
        m = self.modem
        if sep == "?":
            return [f'+CNACT: {c},{int(c in m.pdp_active)},"10.0.0.2"' for c in sorted(m.pdp or {0: {}})], "OK"
        cid = int(args[0])
        if args[1] == "1":
            m.activate(cid)
            return [], "OK", lambda: m._after(m.delays.pdp_s, lambda: m._urc(f"+APP PDP: {cid},ACTIVE"))
        m.pdp_active.discard(cid)
        return [], "OK", lambda: m._urc(f"+APP PDP: {cid},DEACTIVE")

    def caopen(self, sep, args):
        ident, host, port = int(args[1]), args[3], int(args[4])
        self.refuse_if_open(ident)
        if not self.modem.pdp_active:
            return [f"+CAOPEN: {ident},1"], "OK"
        self.open_socket(ident).remote = (host, port)
        return [f"+CAOPEN: {ident},0"], "OK"

    def casend(self, sep, args):
        m = self.modem
        ident, size = int(args[0]), int(args[1])
        s = m.sockets.get_open(ident)

        def then(data: bytes):
            try:
                m.udp_send(ident, data, *s.remote)
            except AtError:
                return [], "ERROR"
            return [], "OK"

        return Prompt(size, then)

    def carecv(self, sep, args):
        item = self.modem.sockets.pop_datagram(int(args[0]))
        if item is None:
            return ["+CARECV: 0"], "OK"
        data = item[0][: int(args[1])]
        # Raw bytes straight after the comma: the reply line is binary.
        return [f"+CARECV: {len(data)},{data.decode('latin-1')}"], "OK"

    def caclose(self, sep, args):
        self.close_socket(int(args[0]))
        return [], "OK"
