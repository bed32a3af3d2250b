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


def handler(application, reset=_reset):
    """on_command callback for app.App: routes update records, reboots on REBOOT."""
    session = [None]  # made on the first update record: most boots never see one

    def ota_session():
        if session[0] is None:
            session[0] = _make_session(application, reset)
        return session[0]

    def on_command(record):
        kind = record[0]
        if kind in ("update_offer", "chunk"):
            s = ota_session()
            if s is None:
                status.log("update: refused (%s)" % kind, error=True)
                return
            s.handle(record)
        elif kind == "reboot":
            status.log("reboot requested by the hub")
            reset()

    return on_command


def _make_session(application, reset):
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
    version = booted.info.version

    def request(offset, length):
        application.box.send_direct(ota.chunk_request_payload(offset, length))

    return ota.OtaSession(update.UpdateWriter(booted.slots), version, request, reset)
