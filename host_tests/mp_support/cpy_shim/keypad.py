# Test scaffolding: CircuitPython's keypad.Keys on emulated GPIO lines. The real one scans the pins
# in the background every `interval` and queues debounced edges; here every edge of the emulated
# line is queued as it happens (the same thing for a test that changes lines between polls).
import gpioemu


class Event:
    def __init__(self, key_number=0, pressed=True, timestamp=None):
        self.key_number = key_number
        self.pressed = pressed
        self.released = not pressed
        self.timestamp = timestamp


class EventQueue:
    def __init__(self, max_events):
        self._max = max_events
        self._events = []
        self.overflowed = False

    def _put(self, event):
        if len(self._events) >= self._max:
            self.overflowed = True
            return
        self._events.append(event)

    def get(self):
        return self._events.pop(0) if self._events else None

    def clear(self):
        self._events = []
        self.overflowed = False

    def __len__(self):
        return len(self._events)


class Keys:
    def __init__(self, pins, *, value_when_pressed, pull=True, interval=0.02, max_events=64):
        self.events = EventQueue(max_events)
        self._pressed_level = 1 if value_when_pressed else 0
        # CircuitPython's internal pull opposes value_when_pressed; tests check what was asked for.
        self.pull_level = (0 if value_when_pressed else 1) if pull else None
        self._lines = [gpioemu.line(pin.name) for pin in pins]
        both = gpioemu.Pin.IRQ_RISING | gpioemu.Pin.IRQ_FALLING
        for number, line in enumerate(self._lines):
            line._handlers.append((self, self._edge_handler(number, line), both))
        self.reset()

    def reset(self):
        """Assume every key released: a key that is down now is reported pressed again."""
        for number, line in enumerate(self._lines):
            if line.level == self._pressed_level:
                self.events._put(Event(number, True))

    def _edge_handler(self, number, line):
        def handler(_owner):
            self.events._put(Event(number, line.level == self._pressed_level))

        return handler

    def deinit(self):
        pass
