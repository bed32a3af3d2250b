# Test scaffolding: CircuitPython's watchdog module (the mode enum and the exception).
class WatchDogMode:
    RAISE = "RAISE"
    RESET = "RESET"


class WatchDogTimeout(Exception):
    pass
