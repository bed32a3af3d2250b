# Test scaffolding: CircuitPython's supervisor.ticks_ms (wraps at 2**29) and supervisor.runtime.
import time

_PERIOD = 1 << 29
# Start 2 s before the wrap, so any test that runs for a few seconds crosses it.
_START = _PERIOD - 2000

try:
    _now_ms = time.ticks_ms  # MicroPython
    _t0 = _now_ms()

    def ticks_ms():
        return (_START + time.ticks_diff(_now_ms(), _t0)) % _PERIOD

except AttributeError:
    _t0 = time.monotonic()

    def ticks_ms():
        return (_START + int((time.monotonic() - _t0) * 1000)) % _PERIOD


class _Runtime:
    serial_connected = True
    autoreload = True
    usb_connected = True
    polls = 0  # how often firmware asked serial_bytes_available (tests check it is what it waits on)

    @property
    def serial_bytes_available(self):
        # The console's USB CDC is this process's stdin: "available" when a read would not block
        # (a byte, or the end of input). CircuitPython returns a count; 1 stands for "some".
        import select
        import sys

        self.polls += 1
        p = select.poll()
        p.register(sys.stdin, select.POLLIN)
        return 1 if p.poll(0) else 0


runtime = _Runtime()
reloads = []


def reload():
    reloads.append(ticks_ms())
