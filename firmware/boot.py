# First file a board runs: the A/B loader (cgboot) verifies the active slot, trial-boots a pending
# update or reverts a failed one, and mounts the verified application image at /app, first on
# sys.path, so `import cellguard` then comes from the signed image (docs/boot.md).
#
# If no slot holds a verified image (a development board, a fresh flash) it says so loudly and
# falls back to the unsigned library in /lib, so firmware/main.py still runs for development.
import sys

if "/lib" not in sys.path:
    sys.path.append("/lib")  # where cgboot lives when it is not frozen into the firmware


def _boot():
    try:
        from cgboot import loader
    except ImportError as e:
        print("cgboot: boot part missing (%s): RUNNING UNVERIFIED CODE FROM /lib" % e)
        return None
    try:
        result = loader.boot_device()
    except Exception as e:  # a broken filesystem must not stop the development fallback
        print("cgboot: boot failed (%r): RUNNING UNVERIFIED CODE FROM /lib" % e)
        return None
    if result is None:
        print("cgboot: RUNNING UNVERIFIED CODE FROM /lib (development fallback)")
    return result


boot_result = _boot()
