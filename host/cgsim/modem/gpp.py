"""The 3GPP TS 27.007 commands every emulated modem answers the same way (a dialect may replace
any of them): +CMEE, +CEREG, +CFUN, the SIM (+CPIN, +CLCK, +CPWD, +CIMI, +CCID), the identity
(+CGSN, +GSN), signal (+CESQ, +CSQ), power saving (+CPSMS, +CEDRXS) and PDP contexts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .atcmd import CME_NO_NETWORK, CME_NOT_SUPPORTED, CME_PDP_AUTH_FAILURE, AtError
from .sim import inserted

if TYPE_CHECKING:
    from .core import ModemEmulator


class ThreeGpp:
    def __init__(self, modem: ModemEmulator):
        self.m = modem

    def commands(self) -> dict:
        m = self.m
        return {
            "+CMEE": self.cmee,
            "+CEREG": self.cereg,
            "+CFUN": self.cfun,
            "+CPIN": self.cpin,
            "+CLCK": self.clck,
            "+CPWD": self.cpwd,
            "+CIMI": lambda sep, a: ([m.need_sim().imsi], "OK"),
            "+CGSN": lambda sep, a: ([m.imei], "OK"),
            "+GSN": lambda sep, a: ([m.imei], "OK"),
            "+CCID": lambda sep, a: ([m.vendor.ccid_prefix + inserted(m.sim).iccid], "OK"),
            "+CESQ": lambda sep, a: ([f"+CESQ: 99,99,255,255,{m.network.rsrq},{m.network.rsrp}"], "OK"),
            "+CSQ": lambda sep, a: ([f"+CSQ: {m.network.rssi},99"], "OK"),
            "+CPSMS": self.cpsms,
            "+CEDRXS": self.cedrxs,
            "+CGDCONT": self.cgdcont,
            "+CGAUTH": self.cgauth,
            "+CGACT": self.cgact,
            "+CGEREP": self.cgerep,
        }

    def cmee(self, sep, args):
        if sep == "=":
            self.m.cmee = int(args[0] or 0)
            return [], "OK"
        return [f"+CMEE: {self.m.cmee}"], "OK"

    def cereg(self, sep, args):
        reg = self.m.reg
        if sep == "=":
            reg.mode = int(args[0] or 0)
            return [], "OK"
        return [f"+CEREG: {reg.mode},{reg.fields(reg.stat)}"], "OK"

    def cfun(self, sep, args):
        m = self.m
        if sep == "?":
            return [f"+CFUN: {m.cfun}"], "OK"
        if args[:2] == ["1", "1"] or args[:1] == ["15"]:
            return [], "OK", m._reboot
        m.cfun = int(args[0])
        if m.cfun == 1:
            return [], "OK", m._start_registration
        m.pdp_active.clear()
        m.reg.set(0)
        return [], "OK"

    def cpin(self, sep, args):
        sim = inserted(self.m.sim)
        if sep == "?":
            return [f"+CPIN: {sim.state_word()}"], "OK"
        if len(args) >= 2:  # PUK and new PIN
            sim.enter_puk(args[0], args[1])
        else:
            sim.enter_pin(args[0])
        return [], "OK", self.m._start_registration

    def clck(self, sep, args):
        if not args or args[0].upper() != "SC":
            raise AtError(CME_NOT_SUPPORTED)
        sim = self.m.need_sim()
        mode = int(args[1])
        if mode == 2:
            return [f"+CLCK: {int(sim.pin_enabled)}"], "OK"
        sim.check_pin(args[2] if len(args) > 2 else "")
        sim.pin_enabled = mode == 1
        sim.unlocked = True
        return [], "OK"

    def cpwd(self, sep, args):
        if len(args) < 3 or args[0].upper() != "SC":
            raise AtError(CME_NOT_SUPPORTED)
        sim = self.m.need_sim()
        sim.check_pin(args[1])
        sim.pin = args[2]
        return [], "OK"

    def cpsms(self, sep, args):
        if sep == "=":
            self.m.psm = ",".join(f'"{a}"' if i >= 3 and a else a for i, a in enumerate(args))
            return [], "OK"
        return [f"+CPSMS: {self.m.psm}"], "OK"

    def cedrxs(self, sep, args):
        if sep == "=":
            self.m.edrx = ",".join(args)
            return [], "OK"
        return [f"+CEDRXS: {self.m.edrx}"], "OK"

    def cgdcont(self, sep, args):
        if sep == "?":
            return [f'+CGDCONT: {c},"IP","{p["apn"]}"' for c, p in sorted(self.m.pdp.items())], "OK"
        self.m.pdp.setdefault(int(args[0]), {})["apn"] = args[2] if len(args) > 2 else ""
        return [], "OK"

    def cgerep(self, sep, args):
        if sep == "?":
            return [f"+CGEREP: {self.m.settings.get('cgerep', '0')},0"], "OK"
        self.m.settings["cgerep"] = args[0]
        return [], "OK"

    def cgauth(self, sep, args):
        self.m.set_auth(int(args[0]), args[2:4])
        return [], "OK"

    def cgact(self, sep, args):
        m = self.m
        if sep == "?":
            return [f"+CGACT: {c},{int(c in m.pdp_active)}" for c in sorted(m.pdp)], "OK"
        cid = int(args[1]) if len(args) > 1 else 1
        if args[0] == "1":
            m.activate(cid)
        else:
            m.pdp_active.discard(cid)
        return [], "OK"


def check_activation(m: ModemEmulator, cid: int) -> None:
    """Raise the +CME error a PDP activation gets: no SIM, not registered, wrong credentials."""
    m.need_sim()
    if not m.reg.registered():
        raise AtError(CME_NO_NETWORK)
    ctx = m.pdp.get(cid, {})
    if not m.network.accepts(ctx.get("user", ""), ctx.get("password", "")):
        raise AtError(CME_PDP_AUTH_FAILURE)
