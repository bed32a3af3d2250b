# Test scaffolding: CircuitPython's hashlib offers only new(name, data); no hashlib.sha256().
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
