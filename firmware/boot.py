# First file a board runs: the console's production lock first (before anything else can be
# interrupted), then CircuitPython's storage set-up, then the A/B loader (verify the active slot,
# trial-boot, revert) once the bootloader lands.
import sys

if "/lib" not in sys.path:
    sys.path.append("/lib")

try:
    from cellguard import consolelock

    consolelock.apply()
except BaseException as e:  # noqa: B036  (even an early Ctrl-C must not stop the boot)
    print("boot: console lock not applied:", repr(e))

from cellguard import runtime  # noqa: E402  (needs /lib on the path first)

# CircuitPython: its flash is read-only to code unless boot.py remounts it (see docs/runtimes.md).
if runtime.NAME == runtime.CIRCUITPYTHON:
    from cellguard import cpy_boot

    cpy_boot.prepare_storage()
    # A shipped profile passes shipped=True (and disable_usb_drive=True above): no REPL on USB.
    cpy_boot.prepare_usb(shipped=False)
