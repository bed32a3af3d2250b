# Test scaffolding: CircuitPython's digitalio on emulated GPIO lines (gpioemu), keyed by pin name.
import gpioemu


class Direction:
    INPUT = "INPUT"
    OUTPUT = "OUTPUT"


class Pull:
    UP = "UP"
    DOWN = "DOWN"


class DigitalInOut:
    def __init__(self, pin):
        self._line = gpioemu.line(pin.name)
        self.direction = Direction.INPUT
        self.pull = None

    def switch_to_input(self, pull=None):
        self.direction = Direction.INPUT
        self.pull = pull

    @property
    def value(self):
        return bool(self._line.level)

    @value.setter
    def value(self, v):
        self._line.drive(1 if v else 0)

    def deinit(self):
        pass
