"""u-blox SARA-R4/R5: prints nothing at boot, resets with AT+CFUN=15, +UPINCNT PIN counters,
+USOCR sockets, +USOST with an '@' prompt, +USORF receive (hex after AT+UDCONF=1,1, quoted raw
bytes otherwise), and +UUSORF / +UUSOCL URCs."""

from __future__ import annotations

from ..atcmd import CME_NOT_SUPPORTED, AtError, Prompt
from ..dialect import Dialect, register


@register
class SaraR4(Dialect):
    name = "sara-r4"
    reset_command = "AT+CFUN=15"
    boot_urcs = ()
    prompt = b"@"
    socket_limit = 7
    recv_urc_format = '+UUSORF: {ident},{size}'
    closed_urc_format = '+UUSOCL: {ident}'
    network_urcs = ("+CSCON: 1", "+CREG: {stat}", "+CGREG: {stat}", "+CTZE: +04,0")

    def commands(self):
        return {
            "+UPINCNT": self.upincnt,
            "+UDCONF": self.setting("udconf"),
            "+USOCR": self.usocr,
            "+USOST": self.usost,
            "+USORF": self.usorf,
            "+USOCL": self.usocl,
        }

    def upincnt(self, sep, args):
        pin, puk = self.modem.pin_counts()
        return [f"+UPINCNT: {pin},3,{puk},10"], "OK"

    def usocr(self, sep, args):
        if args[0] != "17":
            raise AtError(CME_NOT_SUPPORTED)
        ident = self.modem.sockets.free(self.socket_limit)
        self.open_socket(ident, int(args[1]) if len(args) > 1 else 0)
        return [f"+USOCR: {ident}"], "OK"

    def usost(self, sep, args):
        m = self.modem
        ident, host, port, size = int(args[0]), args[1], int(args[2]), int(args[3])
        m.sockets.get_open(ident)

        def then(data: bytes):
            try:
                m.udp_send(ident, data, host, port)
            except AtError as e:
                return [], e.final(m.cmee)
            return [f"+USOST: {ident},{len(data)}"], "OK"

        return Prompt(size, then)

    def usorf(self, sep, args):
        m = self.modem
        ident = int(args[0])
        item = m.sockets.pop_datagram(ident)
        if item is None:
            return [f'+USORF: {ident},"",0,0,""'], "OK"
        data, host, port = item
        hexmode = m.settings.get("udconf.1") == "1"
        body = data.hex() if hexmode else data.decode("latin-1")
        return [f'+USORF: {ident},"{host}",{port},{len(data)},"{body}"'], "OK"

    def usocl(self, sep, args):
        self.close_socket(int(args[0]))
        return [], "OK"
