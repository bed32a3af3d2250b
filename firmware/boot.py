# First file a board runs: Ctrl-C off before anything can be interrupted, CircuitPython's storage
# set-up, then the console's production lock (Ctrl-C back on only for an unlocked console). The A/B
# loader (verify the active slot, trial-boot, revert) comes with the bootloader.
try:
    import micropython

    micropython.kbd_intr(-1)
except BaseException:  # noqa: B036  (CircuitPython has no kbd_intr; see boards/README.md)
    pass

import sys

if "/lib" not in sys.path:
    sys.path.append("/lib")

from cellguard import runtime  # noqa: E402  (needs /lib on the path first)

# CircuitPython: its flash is read-only to code unless boot.py remounts it (see docs/runtimes.md).
if runtime.NAME == runtime.CIRCUITPYTHON:
    from cellguard import cpy_boot

    cpy_boot.prepare_storage()
    # A shipped profile passes shipped=True (and disable_usb_drive=True above): no REPL on USB.
    cpy_boot.prepare_usb(shipped=False)

try:
    from cellguard import consolelock

    consolelock.apply()
except BaseException as e:  # noqa: B036  (an unreadable lock stays locked: Ctrl-C remains off)
    print("boot: console lock state unknown, staying locked:", repr(e))
