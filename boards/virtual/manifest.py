# The virtual board runs the stock unix port from the pinned wheel, with nothing frozen, so that
# tests see exactly the files tools/flash.py copied. To try a frozen build on the host anyway:
#   cd micropython/ports/unix
#   make FROZEN_MANIFEST=/path/to/cellguard/boards/virtual/manifest.py
include("$(PORT_DIR)/variants/manifest.py")  # noqa: F821
include("../manifest_cellguard.py")  # noqa: F821
