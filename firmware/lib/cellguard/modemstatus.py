# What the modem tells the status page: identity (masked by the status registry), registration and
# signal. Until the application loop lands this is read once at boot and again whenever someone
# asks the console for `status`; the application then calls refresh() from its own loop instead.
from cellguard import status

REGISTRATION = {0: "not registered", 1: "home", 2: "searching", 3: "denied", 4: "unknown", 5: "roaming"}


def open_modem(profile):
    """The modem driver for the board profile: its UART, dialect, reset and power-key wires
    (hardware handed in). ModemStatus.refresh powers it up."""
    from cellguard import at, dialects, modem

    d = dialects.get(profile.dialect)
    engine = at.AtEngine(profile.open_uart(), d.line_buffer(), reset_pin=profile.reset_modem(),
                         boot_urcs=d.boot_urcs, power_key=profile.power_key())
    return modem.Modem(engine, d)


def _signal_text(sig):
    if sig.get("rsrp_dbm") is not None:
        return "RSRP %d dBm" % sig["rsrp_dbm"]
    if sig.get("rssi_dbm") is not None:
        return "RSSI %d dBm" % sig["rssi_dbm"]
    return "none"


class ModemStatus:
    def __init__(self, modem, model=None):
        self.modem = modem
        self._ready = False
        if model:
            status.set("modem", "model", model)

    def refresh(self):
        m = self.modem
        if m.at.busy():  # asked from the engine's idle callback while a command waits: keep the
            return  # last values rather than fail with ModemBusy
        try:
            if not self._ready:
                m.power_up()  # switches it on if it is off; init; radio on
                status.set("modem", "imei", m.imei())
                status.set("modem", "iccid", m.iccid())
                self._ready = True
            status.set("modem", "registration", REGISTRATION.get(m.registration(), "unknown"))
            status.set("modem", "signal", _signal_text(m.signal()))
        except Exception as e:  # the status page reports a silent modem; it never stops the console
            self._ready = False
            # A modem that answers with no valid identity is not a silent one: say which.
            silent = getattr(e, "kind", None) is None
            status.set("modem", "registration", "no answer from the modem" if silent else str(e))
            status.log("modem: %r" % (e,), error=True)


def attach(profile):
    """ModemStatus for the board, or None (and the reason on the status page) without a modem."""
    from cellguard import board

    try:
        ms = ModemStatus(open_modem(profile), profile.data.get("modem", {}).get("model"))
    except (board.BoardError, OSError, ValueError, ImportError) as e:
        status.set("modem", "registration", "no modem: %s" % e)
        return None
    ms.refresh()
    return ms
