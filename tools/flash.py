"""`make flash`: flash cellguard onto a board, or onto the virtual board when no port is given.

A thin entry point kept where users look for it; the tool is `cgdev.flash` (also `cellguard flash`).

    python tools/flash.py --board pico-w-sim7080 --port /dev/ttyACM0
    python tools/flash.py                        # the virtual board (started if needed)
"""

import sys

from cgdev.flash import main

if __name__ == "__main__":
    sys.exit(main())
