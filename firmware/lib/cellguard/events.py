# Where parts report what happened, for the console. status.py (the board helper's registry:
# status.set/status.log/status.snapshot) is the console's source; when it is present every call is
# passed on to it. Until then, and always as a fallback, a small bounded ring and a section table
# here keep the same information so nothing reported is lost. Nothing secret goes in here.
_MAX_EVENTS = 32
_events = []
_sections = {}

try:
    from cellguard import status as _status
except ImportError:
    _status = None


def log(event):
    """Record one event line (a str), newest last; the oldest drop off beyond 32."""
    _events.append(event)
    if len(_events) > _MAX_EVENTS:
        del _events[0]
    if _status is not None:
        _status.log(event)


def set(section, key, value):  # noqa: A001  (the name status.py uses)
    _sections.setdefault(section, {})[key] = value
    if _status is not None:
        _status.set(section, key, value)


def recent():
    return list(_events)


def snapshot():
    return {name: dict(values) for name, values in _sections.items()}
