# The last line of defence of a locked console: what holds the serial port when the application
# cannot run at all (no slot verifies, the image fails to import, main.py raises outside its own
# console). It imports nothing from the application, so a broken image cannot break it.
#
# A locked unit (state/console.json says so, as cellguard.consolelock reads it) must never fall into
# the Python REPL: hold() turns Ctrl-C into an ordinary byte, answers every line with one refusal,
# and resets the board after retry_s to try booting again (a transient fault clears; a corrupt
# image stays refused and the unit keeps holding the port). There is no service action here: a unit
# that cannot boot a signed image is re-flashed with its runtime (docs/boot.md, "Lockdown").
import sys

CONSOLE_FILE = "state/console.json"
RETRY_S = 300
_POLL_MS = 200


def _root():
    # Same rule as cellguard.runtime.fs_root() (and cgboot.loader.default_root()).
    from cgboot import loader

    return loader.default_root()


def is_locked(root=None):
    """As cellguard.consolelock.is_locked(): no record means unlocked; an unreadable one locks."""
    import json
    import os

    if root is None:
        root = _root()
    path = root + CONSOLE_FILE if root.endswith("/") else root + "/" + CONSOLE_FILE
    try:
        with open(path) as f:
            return bool(json.load(f).get("locked"))
    except (OSError, ValueError, AttributeError):
        try:
            os.stat(path)
        except OSError:
            return False
        return True


def _interrupt_off():
    try:
        import micropython

        micropython.kbd_intr(-1)
    except (ImportError, AttributeError):
        pass


def _reset():
    try:
        import machine

        machine.reset()
    except (ImportError, AttributeError):
        raise SystemExit(75)  # the unix port: the harness restarts the "chip"


def hold(reason, retry_s=RETRY_S, read_byte=None, write=None, reset=_reset, clock=None):
    """Never returns: refuse every byte on the console until it is time to reset and retry.

    read_byte(timeout_ms) -> int or None, write(str), clock() -> ms: injectable for tests."""
    _interrupt_off()
    if read_byte is None or write is None:
        read_byte, write = _stdio()
    if clock is None:
        import time

        clock = time.ticks_ms
        diff = time.ticks_diff
    else:

        def diff(a, b):
            return a - b

    write("cgboot: console locked; the firmware cannot run (%s); retrying in %d s\n" % (reason[:120], retry_s))
    start = clock()
    while True:
        try:
            _refuse_until(start, retry_s * 1000, read_byte, write, clock, diff)
            break
        except KeyboardInterrupt:  # kbd_intr(-1) failed on this port: still nothing reaches the REPL
            pass
    reset()


def _refuse_until(start, limit_ms, read_byte, write, clock, diff):
    # A burst of input (a line, a Ctrl-C storm, mpremote's raw-REPL bytes) gets one refusal.
    pending = False
    while diff(clock(), start) < limit_ms:
        b = read_byte(_POLL_MS)
        if b is None:
            if pending:
                write("error: input ignored (console locked)\n")
                pending = False
            continue
        pending = True


def _stdio():
    import select

    buf = getattr(sys.stdin, "buffer", sys.stdin)
    poller = select.poll()
    poller.register(sys.stdin, select.POLLIN)

    def read_byte(timeout_ms):
        if not poller.poll(timeout_ms):
            return None
        b = buf.read(1)
        if not b:  # the end of input (a host's closed pipe): wait as a quiet port would
            import time

            time.sleep(timeout_ms / 1000)
            return None
        return b[0]

    def write(s):
        sys.stdout.write(s)

    return read_byte, write
