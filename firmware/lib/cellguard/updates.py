# The application's handler for downlink commands that reach past the messaging layer: over-the-air
# updates (UPDATE OFFER, CHUNK -> cellguard.ota.OtaSession -> the boot part's resumable slot writer)
# and REBOOT. Kept apart from app.py so a build without the boot part simply has no updates.
from cellguard import status


def _reset():
    try:
        import machine

        machine.reset()
    except (ImportError, AttributeError):
        import sys

        sys.exit(0)  # the virtual board and the unix port: the harness restarts the "chip"


# The session of this boot: made on the first update record, or by poll() when a download was
# interrupted by a reboot (most boots never make one).
_session = [None]
_resume_checked = [False]
_make = [None]  # handler()'s session maker, for poll()


def handler(application, reset=_reset, clock=None):
    """on_command callback for app.App: routes update records, reboots on REBOOT. clock: the
    session's ticks (tests hand in one they control; None: runtime.ticks_ms)."""

    def ota_session():
        if _session[0] is None:
            _session[0] = _make_session(application, reset, clock)
        return _session[0]

    _session[0] = None
    _resume_checked[0] = False

    def on_command(record):
        kind = record[0]
        if kind in ("update_offer", "chunk", "image_chunk", "no_image"):
            s = ota_session()
            if s is None:
                status.log("update: refused (%s)" % kind, error=True)
                return
            s.handle(record)
        elif kind == "reboot":
            status.log("reboot requested by the hub")
            reset()

    _make[0] = ota_session
    return on_command


def poll(application):
    """Call from the application loop once online: resumes a download a reboot interrupted (and
    reports how a verified image's trial went), and asks again after a gap."""
    if application.state != "online" or _make[0] is None:  # app.STATE_ONLINE
        return
    if not _resume_checked[0]:
        _resume_checked[0] = True
        try:
            from cgboot import loader, update
        except ImportError:
            return
        from cellguard import atomic, ota

        r = loader.current()
        if r is not None and (
            update.UpdateWriter(r.slots).pending() is not None or atomic.exists(ota.state_path(r.slots))
        ):
            s = _make[0]()
            if s is not None and s.resume():
                status.log("update: resuming an interrupted download")
    if _session[0] is not None:
        _session[0].tick()


def _make_session(application, reset, clock=None):
    from cellguard import runtime

    if runtime.NAME == runtime.CIRCUITPYTHON:
        # No VfsRom, so no slot images and no A/B loader (docs/runtimes.md): a CircuitPython unit
        # is updated by re-flashing its files and signed manifest, never over the air.
        status.log("update: refused, CircuitPython has no over-the-air updates (re-flash with tools/flash.py)",
                   error=True)
        return None
    try:
        from cgboot import loader, update

        from cellguard import ota
    except ImportError:
        status.log("update: no boot part in this build", error=True)
        return None
    booted = loader.current()
    if booted is None:  # unverified development code: there is no slot pair to update
        status.log("update: refused, this unit runs unverified development code", error=True)
        return None
    from cellguard import dailybudget

    version = booted.info.version
    box = application.box

    def request(offset, length, count, image_id):
        # Not charged to the readings' budget: the session pays from its own (docs/messaging.md).
        return box.send_direct(ota.chunk_request_payload(offset, length, count, image_id), charge=False)

    def notify(code, image_id, reason=""):
        # Through the outbox: stored, retransmitted until acknowledged, like a HELLO.
        box.enqueue(ota.status_payload(code, image_id, reason), control=True)

    budget = dailybudget.DailyBudget(
        booted.slots.state_dir + "/update_budget", lambda: box.update_budget, box.today
    )
    dialect = getattr(getattr(application, "modem", None), "dialect", None)
    return ota.OtaSession(update.UpdateWriter(booted.slots), version, request, reset, notify=notify,
                          budget=budget, max_datagram=getattr(dialect, "max_datagram", 1024), clock=clock)
