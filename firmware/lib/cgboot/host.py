# Where am I running? The one rule the boot part and the application share (cellguard.runtime
# imports this module; the boot part imports nothing from the application).
#
# A host is CPython, or a MicroPython-family VM built for an operating system: MicroPython's and
# CircuitPython's unix ports (sys.platform "linux" or "darwin") and MicroPython's Windows port
# ("win32"). A board's sys.platform names its port or chip ("rp2", "esp32", "RP2040"). On a host the
# device's state lives under $CELLGUARD_FS (default: the current folder); on a board under "/".
import sys

HOST = sys.implementation.name == "cpython" or sys.platform in ("linux", "darwin", "win32")


def runtime_name():
    """sys.implementation.name; on a host, the CircuitPython tests' shim may name another (its
    `cellguard_runtime_name` module, test scaffolding). A board never looks."""
    name = sys.implementation.name
    if HOST:
        try:
            from cellguard_runtime_name import NAME as name
        except ImportError:
            pass
    return name


def fs_root():
    """The folder that holds the device's state: "/" on a board, $CELLGUARD_FS or "." on a host."""
    if HOST:
        import os

        return os.getenv("CELLGUARD_FS") or "."
    return "/"
