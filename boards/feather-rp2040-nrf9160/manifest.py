# The Feather RP2040 runs CircuitPython, whose builds freeze modules through the board's
# mpconfigboard.mk (FROZEN_MPY_DIRS += ...), not through a MicroPython manifest. This file serves two
# uses: a MicroPython build for the same hardware (make BOARD=ADAFRUIT_FEATHER_RP2040 FROZEN_MANIFEST=...),
# and, for CircuitPython, the list of what to freeze: point FROZEN_MPY_DIRS at firmware/lib/cgboot
# (or firmware/lib/cellguard until the bootloader lands), as manifest_cellguard.py does here.
include("$(PORT_DIR)/boards/manifest.py")  # noqa: F821
include("../manifest_cellguard.py")  # noqa: F821
