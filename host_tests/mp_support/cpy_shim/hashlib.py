# Test scaffolding: CircuitPython's hashlib offers only new(name, data); no hashlib.sha256().
# $CELLGUARD_SHIM_NO_HASHLIB=1 makes it missing, as on ports built without it (RP2040 without Wi-Fi).
import os

if os.getenv("CELLGUARD_SHIM_NO_HASHLIB"):
    raise ImportError("no module named 'hashlib'")
try:
    import uhashlib as _builtin  # MicroPython: the built-in, under its weak-link name
except ImportError:
    try:
        import _sha256 as _builtin  # CPython <= 3.11
    except ImportError:
        import _sha2 as _builtin  # CPython >= 3.12


def new(name, data=b""):
    if name != "sha256":
        raise ValueError("Unsupported hash algorithm")
    return _builtin.sha256(data)
