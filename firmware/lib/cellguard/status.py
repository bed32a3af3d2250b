# The device's status registry: every part records what a technician may see; the console shows it.
#
#   status.set("modem", "registration", "home")     a value (str, int, float, bool, None, list)
#   status.log("sim: SIM_MISMATCH")                  a recent event or error (bounded ring)
#   status.snapshot() -> dict                        everything, for `status` / `status --json`
#
# Nothing secret is ever put here, and the registry enforces it: a key whose name says it holds a
# secret (key, pin, puk, secret, password, token) is refused, and identifiers (IMEI, ICCID, IMSI)
# are masked at the moment they are set, so no later printing path can leak them in full.
from cellguard import runtime

_SECRET_WORDS = ("key", "pin", "puk", "secret", "password", "passwd", "token", "psk")
_IDENTIFIERS = ("imei", "iccid", "imsi")
_LOG_MAX = 24
_KEEP_DIGITS = 4

_sections = {}
_events = []
_errors = [0]


class StatusError(ValueError):
    """Something that must never be shown was offered to the status registry."""


def mask(identifier, keep=_KEEP_DIGITS):
    """'356938035643809' -> '***********3809': enough to match a label, not to clone a SIM."""
    if identifier is None:
        return None
    s = str(identifier)
    if len(s) <= keep:
        return "*" * len(s)
    return "*" * (len(s) - keep) + s[-keep:]


def _check_name(name):
    low = name.lower()
    for word in _SECRET_WORDS:
        if word in low:
            raise StatusError("status refuses %r: the name says it holds a secret" % name)


def set(section, key, value):
    _check_name(section)
    _check_name(key)
    if key.lower() in _IDENTIFIERS:
        value = mask(value)
    sec = _sections.get(section)
    if sec is None:
        sec = _sections[section] = {}
    sec[key] = value


def get(section, key, default=None):
    return _sections.get(section, {}).get(key, default)


def log(event, error=False):
    """Record an event (error=True counts it as an error). Oldest entries fall off."""
    _events.append((runtime.time_s(), ("ERROR " if error else "") + str(event)))
    if error:
        _errors[0] += 1
    if len(_events) > _LOG_MAX:
        del _events[0]


def events():
    return list(_events)


def snapshot():
    out = {}
    for name in _sections:
        out[name] = dict(_sections[name])
    out["events"] = [[t, e] for t, e in _events]
    out["error_count"] = _errors[0]
    return out


def clear():
    """Forget everything (a soft reset does this on a board; tests call it)."""
    _sections.clear()
    del _events[:]
    _errors[0] = 0
