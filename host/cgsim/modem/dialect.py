"""What one modem family does differently, and the registry the vendor files plug into.

The emulated modem (core.ModemEmulator) speaks 3GPP TS 27.007 (gpp.py); a Dialect adds the vendor's
commands and says how the vendor spells the rest: its reset command, what it prints when it boots,
its socket commands, prompts and URCs. One vendor, one module in cgsim/modem/dialects/, one
subclass decorated with @register; nothing else names it (the package imports every module there).

    @register
    class Mine(Dialect):
        name = "mine"
        def commands(self):
            return {"+MYID": lambda sep, args: (["+MYID: 42"], "OK")}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .atcmd import CME_NOT_ALLOWED, AtError

if TYPE_CHECKING:
    from .core import ModemEmulator
    from .sockets import Socket

# A handler gets (sep, args) - sep "", "=", "?" or "=?" - and returns (lines, final), or
# (lines, final, after) with after() run once the reply is written, or an atcmd.Prompt.
Handler = Callable[[str, list[str]], object]

_REGISTRY: dict[str, type[Dialect]] = {}


def register(cls: type[Dialect]) -> type[Dialect]:
    """Class decorator: make a dialect available by its name (ModemEmulator(name), --dialect)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """The registered dialects, the four built-in ones first."""
    return tuple(_REGISTRY)


def lookup(name: str) -> type[Dialect]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown dialect {name!r}; one of {', '.join(_REGISTRY)}") from None


class Dialect:
    """A 3GPP modem with no vendor commands; subclasses override the data and the hooks."""

    name = ""
    reset_command = "AT+CFUN=1,1"  # software reset the modem still obeys when hung (hang("cfun"))
    boot_urcs: tuple[str, ...] = ("RDY", "+CFUN: 1")  # what it prints when it has booted
    boot_reports_sim = False  # a +CPIN: line after the boot URCs (Quectel, SIMCom)
    radio_on_at_boot = True  # the nRF SLM boots with AT+CFUN? at 0
    prompt = b"\r\n> "  # before a payload command's raw bytes
    ccid_prefix = "+CCID: "  # SIMCom answers AT+CCID with the bare number
    socket_limit = 8
    # The family's socket URCs: data waiting ({ident}, {size}), a socket it closed itself ({ident}),
    # the PDP context taken away ({cid}; "" for 3GPP +CGEV, sent only after AT+CGEREP=1).
    recv_urc_format = ""
    closed_urc_format = ""
    pdp_lost_format = ""
    # identity kind -> (the family's command, its reply line's prefix)
    identities = {"IMEI": ("AT+CGSN", ""), "ICCID": ("AT+CCID", "+CCID: "), "IMSI": ("AT+CIMI", "")}
    # What real units of the family print besides the above, sent when the emulator runs with
    # field_traffic=True (recorded from the field): more lines after a restart's boot URCs...
    restart_banner: tuple[str, ...] = ()
    # ...and URCs that come with a registration change (other RATs' registration, RRC state,
    # time zone, modem events), which land between the lines of whatever command runs.
    network_urcs: tuple[str, ...] = ("+CREG: {stat}", "+CGREG: {stat}")

    def __init__(self, modem: ModemEmulator):
        self.modem = modem

    def commands(self) -> dict[str, Handler]:
        """The vendor's own commands, by name ("+QIOPEN", "#XSOCKET"); they win over 3GPP ones."""
        return {}

    def boot_lines(self, sim_word: str | None) -> list[str]:
        """What the modem prints once booted; sim_word is the +CPIN word (None: no SIM)."""
        lines = list(self.boot_urcs)
        if self.boot_reports_sim:
            lines.append("+CPIN: " + (sim_word or "NOT READY"))
        if self.modem.field_traffic:
            lines += self.restart_banner
        return lines

    def registration_urcs(self, stat: int) -> list[str]:
        """The URCs besides +CEREG that a registration change brings (field_traffic only)."""
        return [u.format(stat=stat) for u in self.network_urcs] if self.modem.field_traffic else []

    def sim_removed_urcs(self) -> list[str]:
        return ["+CPIN: NOT READY"] if self.boot_reports_sim else []

    def recv_urc(self, s: Socket, size: int) -> str:
        """The URC that tells the host a datagram waits on socket s."""
        return self.recv_urc_format.format(ident=s.ident, size=size)

    def closed_urc(self, s: Socket) -> str | None:
        """The URC that tells the host the modem closed socket s on its own (None: silent)."""
        return self.closed_urc_format.format(ident=s.ident) if self.closed_urc_format else None

    def pdp_deactivated_urcs(self, cid: int) -> list[str]:
        """The network took the PDP context away: the family's URC, or 3GPP +CGEV if AT+CGEREP=1
        asked for it."""
        if self.pdp_lost_format:
            return [self.pdp_lost_format.format(cid=cid)]
        if self.modem.settings.get("cgerep") == "1":
            return [f"+CGEV: NW PDN DEACT {cid}"]
        return []

    # -- helpers for the vendor modules
    def setting(self, name: str) -> Handler:
        """A handler that records AT+<NAME>=<key>,<values> as settings["<name>.<key>"] (the tests
        read them: Quectel's data format, u-blox's hex mode)."""

        def record(sep, args):
            self.modem.settings[f"{name}.{args[0]}"] = ",".join(args[1:])
            return [], "OK"

        return record

    def configure_context(self, args: list[str]) -> None:
        """<cid>,<type>,"<apn>","<user>","<password>"[,<auth>]: Quectel +QICSGP, SIMCom +CNCFG."""
        cid = int(args[0])
        self.modem.pdp.setdefault(cid, {})["apn"] = args[2]
        self.modem.set_auth(cid, args[3:5])

    def open_socket(self, ident: int, local_port: int = 0):
        return self.modem.sockets.open(ident, local_port)

    def close_socket(self, ident: int) -> None:
        self.modem.sockets.close(ident)

    def refuse_if_open(self, ident: int) -> None:
        if ident in self.modem.sockets:
            raise AtError(CME_NOT_ALLOWED)
