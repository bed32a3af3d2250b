# Runs after boot.py. The application (modem, SIM lock, messaging, outbox) is wired up here from the
# board profile as the issues that build it land; the console always runs, and in production it
# never returns to the Python REPL (docs/field-guide.md).
import sys

from cellguard import VERSION, board, console, consolelock, runtime, status


def describe():
    status.set("firmware", "version", VERSION)
    status.set("device", "runtime", "%s %d.%d.%d" % ((runtime.NAME,) + tuple(sys.implementation.version[:3])))
    try:
        profile = board.load()
        status.set("device", "board", profile.name)
        status.set("modem", "dialect", profile.dialect)
    except board.BoardError as e:
        status.log(str(e), error=True)
    status.log("booted cellguard %s" % VERSION)


def run():
    describe()
    print("cellguard", VERSION, "on", runtime.NAME, "- type `help` for the console")
    while True:
        try:
            console.main()  # returns only to hand the port to the REPL (unlocked, or serviced)
            return
        except BaseException as e:  # noqa: B036
            if not consolelock.is_locked():
                raise
            status.log("console restarted after %r" % e, error=True)


run()
