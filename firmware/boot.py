# First file a board runs. Until the bootloader issue lands, it puts the firmware library on the
# import path and applies the console's production lock (before anything else can be interrupted);
# the A/B loader (verify the active slot, trial-boot, revert) comes after the lock.
import sys

if "/lib" not in sys.path:
    sys.path.append("/lib")

try:
    from cellguard import consolelock

    consolelock.apply()
except BaseException as e:  # noqa: B036  (even an early Ctrl-C must not stop the boot)
    print("boot: console lock not applied:", repr(e))
