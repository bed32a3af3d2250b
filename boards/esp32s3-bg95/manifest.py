# Custom MicroPython for the ESP32-S3 DevKit + Quectel BG95:
#   cd micropython/ports/esp32
#   make BOARD=ESP32_GENERIC_S3 FROZEN_MANIFEST=/path/to/cellguard/boards/esp32s3-bg95/manifest.py
include("$(PORT_DIR)/boards/manifest.py")  # noqa: F821  (the stock frozen modules: _boot, asyncio, ...)
include("../manifest_cellguard.py")  # noqa: F821
