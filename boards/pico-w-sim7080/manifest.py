# Custom MicroPython for the Pico W + Waveshare Pico-SIM7080G HAT:
#   cd micropython/ports/rp2
#   make BOARD=RPI_PICO_W FROZEN_MANIFEST=/path/to/cellguard/boards/pico-w-sim7080/manifest.py
include("$(PORT_DIR)/boards/RPI_PICO_W/manifest.py")  # noqa: F821  (the stock frozen modules: network, asyncio)
include("../manifest_cellguard.py")  # noqa: F821
