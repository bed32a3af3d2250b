# Test scaffolding: cellguard.runtime reads this on a host only, to take its CircuitPython branches.
NAME = "circuitpython"
