# Test scaffolding: make this VM answer as CircuitPython's unix port does, for the modules imported
# after it: sys.implementation.name is "circuitpython", sys.platform stays the OS's ("linux" or
# "darwin", as on MicroPython's unix port). Everything else is the real sys. Import it first.
import sys as _sys


class _Implementation:
    name = "circuitpython"
    version = _sys.implementation.version


class _Sys:
    implementation = _Implementation()

    def __getattr__(self, name):
        return getattr(_sys, name)


_sys.modules["sys"] = _Sys()
