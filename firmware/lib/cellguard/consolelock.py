# Production lock of the serial console: whether the Python REPL may be reached from the port.
#
# tools/flash.py --production writes state/console.json {"locked": true}. boot.py calls apply() as
# its first act, so Ctrl-C is an ordinary byte from then on (micropython.kbd_intr(-1)); main.py runs
# the console, which never returns to the REPL unless a service challenge is answered.
import json

from cellguard import runtime

_FILE = "state/console.json"


def _path():
    return runtime.path_join(runtime.fs_root(), _FILE)


def is_locked():
    try:
        with open(_path()) as f:
            return bool(json.load(f).get("locked"))
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
    """Called first thing at boot: in production Ctrl-C must not interrupt anything from here on."""
    locked = is_locked()
    if locked:
        set_interrupt(False)
    return locked
