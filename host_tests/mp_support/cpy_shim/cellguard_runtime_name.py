# Test scaffolding: cellguard.runtime reads this on a host only, to take its CircuitPython branches.
NAME = "circuitpython"

# CircuitPython's default builds have no native emitter: _fastxor does not compile there.
import no_native_emitter  # noqa: E402, F401
