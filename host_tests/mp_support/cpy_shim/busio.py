# Test scaffolding: CircuitPython's busio.UART (on a tty) and busio.I2C (on the emulated bus),
# with CircuitPython's documented signatures so a wrong keyword fails here as it would on a board.
import os
import select

import i2cemu


class UART:
    def __init__(self, tx=None, rx=None, *, rts=None, cts=None, rs485_dir=None, rs485_invert=False,
                 baudrate=9600, bits=8, parity=None, stop=1, timeout=1, receiver_buffer_size=64):
        import termios

        path = os.getenv("CELLGUARD_SHIM_UART")
        if path is None:
            raise ValueError("shim: set CELLGUARD_SHIM_UART to the tty behind board.TX/board.RX")
        self._file = open(path, "r+b", buffering=0)  # unbuffered: CPython cannot seek a tty
        fd = self._file.fileno()
        try:
            termios.setraw(fd)  # MicroPython's termios
        except AttributeError:
            import tty  # CPython keeps setraw in tty

            tty.setraw(fd)
        attrs = termios.tcgetattr(fd)
        attrs[6][6] = 0  # VMIN: reads return what is waiting
        attrs[6][5] = 0  # VTIME
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        self._poll = select.poll()
        self._poll.register(self._file, select.POLLIN)
        self.baudrate = baudrate
        self.timeout = timeout

    @property
    def in_waiting(self):
        return 1 if self._poll.poll(0) else 0

    def readinto(self, buf):
        return self._file.readinto(buf) or None  # CircuitPython returns None when nothing came

    def write(self, buf):
        return self._file.write(buf)

    def deinit(self):
        self._file.close()


class I2C:
    def __init__(self, scl, sda, *, frequency=100000, timeout=255):
        self._bus = i2cemu.default_bus()
        self._locked = False

    def try_lock(self):
        if self._locked:
            return False
        self._locked = True
        return True

    def unlock(self):
        self._locked = False

    def _need_lock(self):
        if not self._locked:
            raise RuntimeError("Function requires lock")

    def scan(self):
        self._need_lock()
        return self._bus.scan()

    def writeto(self, address, buffer, *, start=0, end=None):
        self._need_lock()
        self._bus.write(address, memoryview(buffer)[start:end])

    def readfrom_into(self, address, buffer, *, start=0, end=None):
        self._need_lock()
        self._bus.read_into(address, memoryview(buffer)[start:end])

    def writeto_then_readfrom(self, address, out_buffer, in_buffer, *, out_start=0, out_end=None,
                              in_start=0, in_end=None):
        self._need_lock()
        self._bus.write(address, memoryview(out_buffer)[out_start:out_end])
        self._bus.read_into(address, memoryview(in_buffer)[in_start:in_end])

    def deinit(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.deinit()
