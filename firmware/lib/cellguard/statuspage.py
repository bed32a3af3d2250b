# The `status` page a technician reads, rendered from the status registry's snapshot
# (docs/field-guide.md explains every line). Its own module so the console compiles in a small heap
# and the page's code is loaded only when someone asks for it.
def field(snap, section, key, default="unknown"):
    v = snap.get(section, {}).get(key)
    return default if v is None else v


def when(t):
    if not t:
        return "never"
    try:
        y, mo, d, h, mi, s = _localtime(t)[:6]
        return "%04d-%02d-%02d %02d:%02d:%02d UTC" % (y, mo, d, h, mi, s)
    except (OverflowError, ValueError, TypeError):
        return str(t)


def _localtime(t):
    import time

    return time.gmtime(t) if hasattr(time, "gmtime") else time.localtime(t)


UNLOCKED_BANNER = "UNLOCKED CERTIFICATION UNIT - MUST NOT SHIP"


def certification_unit(snap):
    sim = snap.get("sim", {})
    return bool(sim.get("certification_unit")) or sim.get("state") == "UNLOCKED"


def _last_sim_event(snap):
    # The newest tamper event persisted in state/simlock, from this boot or an earlier one.
    outcome = field(snap, "sim", "last_event", None)
    if outcome is None:
        return ""
    return "  last event %s %s" % (when(field(snap, "sim", "last_event_t", 0)), outcome)


def running_version(snap):
    """The version of the image that runs (the signed image's, `1.2.0`; `+n` only for a build n > 0),
    else the library's: the headline and `version` name what the boot part booted."""
    v = field(snap, "firmware", "image_version", None)
    if v is None:
        return field(snap, "firmware", "version")
    return v[:-2] if v.endswith("+0") else v


def render(snap):
    """The `status` page a technician reads (docs/field-guide.md explains every line)."""
    lines = []
    add = lines.append
    add("cellguard %s  board %s  runtime %s" % (running_version(snap), field(snap, "device", "board"),
                                                field(snap, "device", "runtime")))
    add("device      id %s" % field(snap, "device", "id", "not provisioned"))
    add("firmware    slot %s  state %s" % (field(snap, "boot", "slot"), field(snap, "boot", "state")))
    add("console     %s" % field(snap, "console", "mode"))
    if certification_unit(snap):
        lines.insert(0, UNLOCKED_BANNER)  # first thing anyone sees: such a unit must never ship
    add("sim lock    %s%s" % (field(snap, "sim", "state"), _last_sim_event(snap)))
    add("modem       %s  IMEI %s  ICCID %s" % (field(snap, "modem", "model"), field(snap, "modem", "imei", "-"),
                                              field(snap, "modem", "iccid", "-")))
    reg = field(snap, "modem", "registration")
    if isinstance(reg, int):  # the modem driver publishes the +CEREG stat number
        from cellguard.modemstatus import REGISTRATION

        reg = REGISTRATION.get(reg, "unknown (%d)" % reg)
    add("network     %s  signal %s" % (reg, field(snap, "modem", "signal")))
    add("outbox      %s waiting  last delivery %s" % (field(snap, "outbox", "depth"),
                                                      when(field(snap, "outbox", "last_delivery", 0))))
    add("sequence    sent %s  received %s" % (field(snap, "messaging", "tx_seq"),
                                              _seq(field(snap, "messaging", "rx_seq"))))
    add("sensor      " + _sensor_line(snap.get("sensor", {})))
    add("tamper      " + _tamper_line(snap.get("tamper", {})))
    # downloading n/N, waiting for coverage, waiting for the update budget, verified, reboot
    # pending, installed, or refused: why (cellguard.ota)
    add("update      %s" % field(snap, "update", "state", "none"))
    errs = [e for e in snap.get("events", []) if e[1].startswith("ERROR ")]
    add("errors      %d%s" % (snap.get("error_count", 0), "" if errs else " (none recent)"))
    for t, e in errs[-5:]:
        add("  %s  %s" % (when(t), e[6:]))
    return "\n".join(lines)


def _seq(n):
    # The highest sequence number received; -1 (from a unit that never received one) says so.
    return "none" if n == -1 else n


def _sensor_line(sec):
    if sec.get("fitted") == "none":
        return "none fitted"  # the profile has no sensor: not a fault
    q = sec.get("quality")
    if q is None:
        return "%s  no reading yet" % sec.get("type", "unknown")
    line = "%s  quality %s  last reading %s" % (sec.get("type", "unknown"), q, when(sec.get("last")))
    return line + ("  (%s)" % sec["reason"] if q != "ok" and sec.get("reason") else "")


def _tamper_line(sec):
    if sec.get("fitted") == "none":
        return "none fitted"
    state = sec.get("state", "unknown")
    if not sec.get("seq"):
        return "%s  no events" % state
    return "%s  last #%s %s  keys wiped %s" % (state, sec["seq"], when(sec.get("last")),
                                               "yes" if sec.get("wiped") else "no")
