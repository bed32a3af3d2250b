# First file a board runs. Until the bootloader issue lands, it only puts the firmware library on
# the import path; the A/B loader (verify the active slot, trial-boot, revert) takes its place.
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
