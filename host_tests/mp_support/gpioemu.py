"""Emulated GPIO lines for tests: a test drives a line, firmware reads it as machine.Pin or, through
the CircuitPython shim, as digitalio.DigitalInOut. Runs on the MicroPython unix port and CPython."""


class Line:
    def __init__(self, name, level=0):
        self.name = name
        self.level = level
        self._handlers = []  # (pin, handler, trigger)

    def drive(self, level):
        """Set the line's level, as the outside world (an enclosure switch) would; fires IRQs."""
        level = 1 if level else 0
        old, self.level = self.level, level
        if old == level:
            return
        edge = Pin.IRQ_RISING if level else Pin.IRQ_FALLING
        for pin, handler, trigger in self._handlers:
            if trigger & edge:
                handler(pin)


_lines = {}


def line(name, level=None):
    """The line called `name` (created on first use); `level` sets its starting level."""
    ln = _lines.get(name)
    if ln is None:
        ln = _lines[name] = Line(name, 0 if level is None else level)
    elif level is not None:
        ln.level = level
    return ln


class Pin:
    """machine.Pin's calls that cellguard uses: value(), irq(handler, trigger)."""

    IN = 0
    OUT = 1
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_FALLING = 4
    IRQ_RISING = 8

    def __init__(self, name, mode=IN, pull=None):
        self._line = line(name)
        self.mode = mode
        self.pull = pull

    def value(self, v=None):
        if v is None:
            return self._line.level
        self._line.drive(v)

    def irq(self, handler=None, trigger=IRQ_FALLING | IRQ_RISING):
        self._line._handlers = [h for h in self._line._handlers if h[0] is not self]
        if handler is not None:
            self._line._handlers.append((self, handler, trigger))


def reset():
    """Forget every line and its IRQ handlers (between simulated reboots)."""
    _lines.clear()
