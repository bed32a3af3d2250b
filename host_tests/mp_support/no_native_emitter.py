# Test scaffolding: this VM has no native emitter, as CircuitPython's default builds (the feather
# profile's RP2040 among them) and some MicroPython ports have none.
#
# On such a build the compiler rejects `@micropython.viper`, so `import cellguard._fastxor` raises
# SyntaxError("invalid micropython decorator") and cellguard.crypto takes its pure-Python loops.
# The unix port has the emitter; importing this module first makes the same import raise the same
# error there, so the code a build without native code runs is run by a MicroPython-family VM (not
# only by CPython). harness.NO_NATIVE_RT and the CircuitPython shim (cpy_shim) import it.
import sys


class _NotCompiled:
    def __getattr__(self, name):
        raise SyntaxError("invalid micropython decorator")


sys.modules["cellguard._fastxor"] = _NotCompiled()
