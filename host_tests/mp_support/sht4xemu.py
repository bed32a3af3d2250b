"""An emulated Sensirion SHT4x on the emulated I2C bus (i2cemu), for tests on both runtimes.

Follows the SHT4x datasheet: one-byte commands; a measurement answers 6 bytes (temperature word,
CRC, humidity word, CRC), CRC-8 polynomial 0x31, init 0xFF; the sensor NACKs its address while it
is measuring (or heating), so a read that comes too early fails; a result can be read once.
Faults a test can inject: `corrupt_next` (CRC errors), `stuck` (the same raw words every time),
`nack_next` (bus glitches), `detach()` via the bus (absent), and any temperature/humidity it likes (jumps, out of range).
"""

try:
    from time import ticks_diff, ticks_ms
except ImportError:  # CPython
    import time as _time

    def ticks_ms():
        return int(_time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b


ADDRESS = 0x44
MEASURE_HIGH = 0xFD
MEASURE_MED = 0xF6
MEASURE_LOW = 0xE0
READ_SERIAL = 0x89
SOFT_RESET = 0x94
# command -> (busy time in ms, rounded up from the datasheet's maximum; heater temperature rise in C)
COMMANDS = {
    MEASURE_HIGH: (9, 0.0),
    MEASURE_MED: (5, 0.0),
    MEASURE_LOW: (2, 0.0),
    0x39: (1100, 30.0),  # heater 200 mW for 1 s, then a high-precision measurement
    0x32: (110, 8.0),  # 200 mW, 0.1 s
    0x2F: (1100, 18.0),  # 110 mW, 1 s
    0x24: (110, 5.0),  # 110 mW, 0.1 s
    0x1E: (1100, 4.0),  # 20 mW, 1 s
    0x15: (110, 1.0),  # 20 mW, 0.1 s
    READ_SERIAL: (1, 0.0),
    SOFT_RESET: (1, 0.0),
}


def crc8(data):
    crc = 0xFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) if crc & 0x80 else (crc << 1)
        crc &= 0xFF
    return crc


def _word(value):
    w = bytes(((value >> 8) & 0xFF, value & 0xFF))
    return w + bytes((crc8(w),))


class Sht4x:
    def __init__(self, serial=0x0BADCAFE, temperature_c=21.5, humidity_rh=45.0, noise_lsb=4, clock=ticks_ms):
        # `clock` returns milliseconds; a test that checks the busy window hands in one it moves itself,
        # since on a loaded machine the wall clock can pass the whole window between two statements.
        self._clock = clock
        self.serial = serial
        self.temperature_c = temperature_c
        self.humidity_rh = humidity_rh
        self.noise_lsb = noise_lsb  # a real sensor's last bits move; `stuck` stops them
        self.stuck = False
        self.corrupt_next = 0
        self.nack_next = 0  # NACK this many reads (a bus glitch), the sensor still present
        self.commands = []  # every command byte received, for tests
        self._result = None
        self._busy_until = None
        self._seed = 12345
        self._stuck_words = None

    def _noise(self):
        # A small LCG: deterministic, the same on MicroPython and CPython.
        self._seed = (self._seed * 1103515245 + 12345) & 0x7FFFFFFF
        return (self._seed >> 16) % (2 * self.noise_lsb + 1) - self.noise_lsb

    def _busy(self):
        if self._busy_until is None:
            return False
        if ticks_diff(self._clock(), self._busy_until) >= 0:
            self._busy_until = None
            return False
        return True

    def raw_words(self, heat=0.0):
        t = int((self.temperature_c + heat + 45.0) * 65535 / 175.0 + 0.5) + self._noise()
        rh = int((self.humidity_rh + 6.0) * 65535 / 125.0 + 0.5) + self._noise()
        return max(0, min(65535, t)), max(0, min(65535, rh))

    # ---- the I2C device interface (i2cemu) ----
    def i2c_write(self, data):
        if not data:
            return  # an address-only probe is ACKed when idle
        if self._busy():
            raise OSError(5)  # NACK: still measuring
        cmd = data[0]
        if len(data) != 1 or cmd not in COMMANDS:
            raise OSError(5)  # NACK: not a command
        self.commands.append(cmd)
        delay, heat = COMMANDS[cmd]
        self._busy_until = self._clock() + delay
        if cmd == SOFT_RESET:
            self._result = None
        elif cmd == READ_SERIAL:
            self._result = _word(self.serial >> 16) + _word(self.serial & 0xFFFF)
        else:
            if self.stuck:
                if self._stuck_words is None:
                    self._stuck_words = self.raw_words(heat)
                t, rh = self._stuck_words
            else:
                self._stuck_words = None
                t, rh = self.raw_words(heat)
            self._result = _word(t) + _word(rh)

    def i2c_read(self, n):
        if self.nack_next > 0:
            self.nack_next -= 1
            raise OSError(5)
        if self._busy() or self._result is None:
            raise OSError(5)  # NACK: measuring, or nothing to read
        data = bytearray(self._result)
        self._result = None
        if self.corrupt_next > 0:
            self.corrupt_next -= 1
            data[2] ^= 0x5A
        return bytes(data) + b"\xff" * max(0, n - len(data))
