# Test scaffolding: CircuitPython's storage.remount/getmount. CIRCUITPY starts read-only to code.
class _Mount:
    def __init__(self):
        self.readonly = True
        self.remounts = 0


_mounts = {"/": _Mount()}


def getmount(mount_path):
    return _mounts[mount_path]


def remount(mount_path, readonly=False, *, disable_concurrent_write_protection=False):
    m = _mounts[mount_path]
    m.readonly = bool(readonly)
    m.remounts += 1


usb_drive_enabled = True


def disable_usb_drive():
    global usb_drive_enabled
    usb_drive_enabled = False
