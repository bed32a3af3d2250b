# Production lock of the serial console: whether the Python REPL may be reached from the port.
#
# tools/flash.py --production writes state/console.json {"locked": true} (optionally "repl_idle_s").
# boot.py calls apply() as its first act, so Ctrl-C is an ordinary byte from then on
# (micropython.kbd_intr(-1)); on a locked unit boot.py runs the console, which never returns to the
# REPL unless a service challenge is answered, and then only until the next reset or
# REPL_IDLE_S without activity on the REPL (watch_repl).
import json

from cellguard import runtime

_FILE = "state/console.json"
REPL_IDLE_S = 600  # a REPL a service response opened locks again after this long unused


def _path():
    return runtime.path_join(runtime.fs_root(), _FILE)


def _record():
    with open(_path()) as f:
        return json.load(f)


def is_locked():
    try:
        return bool(_record().get("locked"))
    except (OSError, ValueError):
        # No record (a development flash) means unlocked. A corrupt record cannot be told apart
        # from an attack on the lock, so it locks: a service response can always reopen the REPL.
        import os

        try:
            os.stat(_path())
        except OSError:
            return False
        return True


def set_interrupt(enabled):
    # Ctrl-C as an interrupt (enabled) or as an ordinary byte the console reads (disabled).
    try:
        import micropython

        micropython.kbd_intr(3 if enabled else -1)
    except (ImportError, AttributeError):
        pass  # CPython and CircuitPython: see boards/README.md for CircuitPython's console lock


def apply():
    """Called first thing at boot: in production Ctrl-C must not interrupt anything from here on;
    on an unlocked unit it interrupts again (boot.py turned it off until the state was known)."""
    locked = is_locked()
    set_interrupt(not locked)
    return locked


def watch_repl(reset):
    """A service response handed a locked unit's port to the REPL: call reset() (which locks it
    again) once the REPL has been unused for repl_idle_s (state/console.json, else REPL_IDLE_S).
    Use is what the REPL prints (os.dupterm shows it: every echoed keystroke, every result); a soft
    timer looks every second. False where the runtime has neither (CircuitPython: its REPL there
    is on a USB interface a locked unit does not have), so the next reset is what locks it."""
    import os

    try:
        import io

        import machine

        dupterm, timer = os.dupterm, machine.Timer
    except (ImportError, AttributeError):
        return False
    try:
        idle_ms = int(_record().get("repl_idle_s", REPL_IDLE_S) * 1000)
    except (OSError, ValueError, TypeError, AttributeError):
        idle_ms = REPL_IDLE_S * 1000
    seen = [runtime.ticks_ms()]

    class Seen(io.IOBase):
        def write(self, buf):
            seen[0] = runtime.ticks_ms()
            return len(buf)

        def readinto(self, buf):
            return None

        def ioctl(self, op, arg):
            return 0

    def check(t):
        if runtime.ticks_diff(runtime.ticks_ms(), seen[0]) >= idle_ms:
            t.deinit()
            reset()

    dupterm(Seen(), 0)
    try:
        timer(-1, mode=timer.PERIODIC, period=1000, callback=check)  # a soft timer (rp2, unix)
    except ValueError:
        timer(0, mode=timer.PERIODIC, period=1000, callback=check)  # ports with hardware ids only
    return True
