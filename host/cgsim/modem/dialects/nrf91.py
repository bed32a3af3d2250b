"""Nordic nRF9160 Serial LTE Modem (SLM v2 syntax): boots with "Ready" and its radio off,
identity through %XICCID, PIN counters through +CPINR, handle-based #X socket commands with the
payload as hex inside the command (so no prompt), and #XAPOLL receive URCs."""

from __future__ import annotations

from ..atcmd import CME_NOT_SUPPORTED, AtError
from ..dialect import Dialect, register
from ..sim import inserted


@register
class Nrf91(Dialect):
    name = "nrf91"
    reset_command = "AT#XRESET"
    boot_urcs = ("Ready",)
    radio_on_at_boot = False
    recv_urc_format = '#XAPOLL: {ident},1'
    closed_urc_format = '#XSOCKET: {ident},"closed"'
    identities = {"IMEI": ("AT+CGSN", ""), "ICCID": ("AT%XICCID", "%XICCID: "), "IMSI": ("AT+CIMI", "")}
    network_urcs = ("+CSCON: 1", "%MDMEV: SEARCH STATUS 2", "+CGREG: {stat}")

    def commands(self):
        m = self.modem
        return {
            "%XICCID": lambda sep, a: ([f"%XICCID: {inserted(m.sim).iccid}"], "OK"),
            "+CPINR": self.cpinr,
            "#XSOCKET": self.xsocket,
            "#XBIND": self.xbind,
            "#XAPOLL": lambda sep, a: ([], "OK"),
            "#XRESET": lambda sep, a: ([], "OK", m._reboot),
            "#XSENDTO": self.xsendto,
            "#XRECVFROM": self.xrecvfrom,
            "#XCLOSE": self.xclose,
        }

    def cpinr(self, sep, args):
        pin, puk = self.modem.pin_counts()
        which = args[0].upper()
        return [f'+CPINR: "{which}",{pin if which == "SIM PIN" else puk}'], "OK"

    def xsocket(self, sep, args):
        if args[0] != "1":
            raise AtError(CME_NOT_SUPPORTED)
        ident = self.modem.sockets.free(self.socket_limit)
        self.open_socket(ident)
        return [f"#XSOCKET: {ident},2,17"], "OK"

    def xbind(self, sep, args):
        ident, port = int(args[0]), int(args[1])
        self.modem.sockets.close(ident)
        self.open_socket(ident, port)
        return [], "OK"

    def xsendto(self, sep, args):
        ident, mode, host, port, data = int(args[0]), args[1], args[3], int(args[4]), args[5]
        payload = bytes.fromhex(data) if mode == "1" else data.encode("latin-1")
        self.modem.udp_send(ident, payload, host, port)
        return [f"#XSENDTO: {len(payload)}"], "OK"

    def xrecvfrom(self, sep, args):
        item = self.modem.sockets.pop_datagram(int(args[0]))
        if item is None:
            return [f'#XRECVFROM: {args[0]},1,0,"",0'], "OK"
        data, host, port = item
        return [f'#XRECVFROM: {args[0]},1,{len(data)},"{host}",{port}', data.hex()], "OK"

    def xclose(self, sep, args):
        self.close_socket(int(args[0]))
        return [f"#XCLOSE: {args[0]},0"], "OK"
