# First file a board runs. Until the bootloader issue lands, it puts the firmware library on the
# import path and applies the console's production lock before anything else; the A/B loader
# (verify the active slot, trial-boot, revert) comes after the lock.
try:
    # Ctrl-C off before anything can be interrupted; back on below only if the console is unlocked.
    import micropython

    micropython.kbd_intr(-1)
except BaseException:  # noqa: B036  (CircuitPython has no kbd_intr; see boards/README.md)
    pass

import sys

if "/lib" not in sys.path:
    sys.path.append("/lib")

try:
    from cellguard import consolelock

    consolelock.apply()
except BaseException as e:  # noqa: B036  (an unreadable lock stays locked: Ctrl-C remains off)
    print("boot: console lock state unknown, staying locked:", repr(e))
