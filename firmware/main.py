# Runs after boot.py. The application (modem, SIM lock, messaging, outbox) is wired up here from the
# board profile as the issues that build it land; the console always runs, and in production it
# never returns to the Python REPL (docs/field-guide.md).
import sys

from cellguard import VERSION, board, console, consolelock, runtime, status


def describe():
    """What the status page shows from the start; returns the board profile (or None)."""
    status.set("firmware", "version", VERSION)
    status.set("device", "runtime", "%s %d.%d.%d" % ((runtime.NAME,) + tuple(sys.implementation.version[:3])))
    profile = None
    try:
        profile = board.load()
        status.set("device", "board", profile.name)
        status.set("modem", "dialect", profile.dialect)
    except board.BoardError as e:
        status.log(str(e), error=True)
    _describe_boot()
    status.log("booted cellguard %s" % VERSION)
    return profile


def _describe_boot():
    # The A/B loader's decision, when the loader is installed (cgboot); otherwise the page says unknown.
    try:
        from cgboot import loader, slots
    except ImportError:
        return
    try:
        r = loader.current()
        if r is None:
            status.set("boot", "slot", "none")
            status.set("boot", "state", "unverified (development fallback to /lib)")
        else:
            status.set("boot", "slot", slots.SLOT_NAMES[r.slot])
            status.set("boot", "state", "testing" if r.trial else "confirmed")
            status.set("firmware", "image_version", r.info.version_str())
    except Exception as e:
        status.log("boot state: %r" % (e,), error=True)


def run():
    profile = describe()
    refresh = None
    if profile is not None:
        from cellguard import modemstatus

        ms = modemstatus.attach(profile)
        refresh = ms.refresh if ms else None
    print("cellguard", VERSION, "on", runtime.NAME, "- type `help` for the console")
    while True:
        try:
            console.main(refresh)  # returns only to hand the port to the REPL (unlocked, or serviced)
            return
        except BaseException as e:  # noqa: B036
            if not consolelock.is_locked():
                raise
            status.log("console restarted after %r" % e, error=True)


run()
