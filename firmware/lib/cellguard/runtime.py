# The one place in the firmware that knows which runtime it is on.
#
# Everything else imports the services it needs from here: ticks and sleeps, an AES-128 block
# encryptor, SHA-256, random bytes, a byte-stream UART and the filesystem root. Hardware modules
# (machine, board, busio) are only imported inside the functions that open hardware, never at
# import time, so the same firmware modules run on a board, on the unix port and under CPython.
import sys

from cgboot import host as _host

MICROPYTHON = "micropython"
CIRCUITPYTHON = "circuitpython"
CPYTHON = "cpython"

# A host (CPython, or a MicroPython or CircuitPython unix port), as opposed to a board: state lives in
# $CELLGUARD_FS. The rule is the boot part's (cgboot.host), so both agree on the filesystem root.
HOST = _host.HOST
# Test scaffolding only: there is no CircuitPython interpreter on a host, so the CircuitPython-path
# tests put host_tests/mp_support/cpy_shim on the path. It holds `cellguard_runtime_name` (naming
# "circuitpython") beside stand-ins for aesio, busio, board, microcontroller, storage, supervisor,
# and this switches every branch below to CircuitPython's APIs. Only a host looks; a board never does.
NAME = _host.runtime_name()
# MicroPython's unix port: a tty instead of machine.UART, a folder instead of flash.
UNIX_PORT = HOST and NAME == MICROPYTHON == sys.implementation.name

# ---- time -------------------------------------------------------------------------------------
if NAME != MICROPYTHON:
    import time as _time

    # Same wrap-around arithmetic as MicroPython's time.ticks_*: CPython wraps at 2**30 here,
    # CircuitPython's supervisor.ticks_ms at 2**29.
    _TICKS_PERIOD = 1 << (30 if NAME == CPYTHON else 29)
    _TICKS_HALF = _TICKS_PERIOD // 2

    if NAME == CPYTHON:

        def ticks_ms():
            return int(_time.monotonic() * 1000) & (_TICKS_PERIOD - 1)

    else:
        from supervisor import ticks_ms  # noqa: F401

    def ticks_add(ticks, delta):
        return (ticks + delta) % _TICKS_PERIOD

    def ticks_diff(end, start):
        return ((end - start + _TICKS_HALF) & (_TICKS_PERIOD - 1)) - _TICKS_HALF

    def sleep_ms(ms):
        if ms > 0:
            _time.sleep(ms / 1000)

    def time_s():
        return int(_time.time())

else:
    import time as _time

    ticks_ms = _time.ticks_ms
    ticks_add = _time.ticks_add
    ticks_diff = _time.ticks_diff
    sleep_ms = _time.sleep_ms

    def time_s():
        return int(_time.time())


# ---- AES-128 block, SHA-256, randomness --------------------------------------------------------
class _AesCryptography:
    # CPython: one ECB encryptor per key; update() is stateless for ECB.
    def __init__(self, key):
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        self._enc = Cipher(algorithms.AES(bytes(key)), modes.ECB()).encryptor()

    def encrypt(self, inbuf, outbuf):
        outbuf[: len(inbuf)] = self._enc.update(bytes(inbuf))


class _AesAesio:
    # CircuitPython: aesio.AES in ECB mode encrypts exactly one 16-byte block per call.
    def __init__(self, key):
        import aesio

        self._aes = aesio.AES(bytes(key), aesio.MODE_ECB)

    def encrypt(self, inbuf, outbuf):
        enc = self._aes.encrypt_into
        if len(inbuf) == 16:
            enc(inbuf, outbuf)
            return
        src = memoryview(inbuf)
        dst = memoryview(outbuf)
        for i in range(0, len(inbuf), 16):
            enc(src[i : i + 16], dst[i : i + 16])


def aes_block(key):
    """An AES-128 ECB encryptor for `key` (16 bytes): obj.encrypt(inbuf, outbuf).

    inbuf and outbuf are buffers of a multiple of 16 bytes; they may be the same buffer. Only the
    forward direction is offered: CCM and CTR, the modes cellguard uses, never need to decrypt a
    block, and not every runtime's AES can.
    """
    if len(key) != 16:
        raise ValueError("AES-128 key must be 16 bytes")
    if NAME == CPYTHON:
        return _AesCryptography(key)
    if NAME == CIRCUITPYTHON:
        return _AesAesio(key)
    import cryptolib

    return cryptolib.aes(bytes(key), 1)  # mode 1 = ECB; encrypt(in, out) works in place


def sha256(data=b""):
    if NAME == CIRCUITPYTHON:
        # CircuitPython's hashlib has only new(name, data), and only on ports built with it (boards
        # with Wi-Fi/mbedTLS); elsewhere the pinned, bundled adafruit_hashlib (pure Python, slow).
        try:
            import hashlib
        except ImportError:
            import adafruit_hashlib as hashlib
        return hashlib.new("sha256", data)
    import hashlib

    return hashlib.sha256(data)


def random_bytes(n):
    import os

    return os.urandom(n)


# ---- filesystem root ---------------------------------------------------------------------------
_fs_root = None


def fs_root():
    """Folder under which the firmware keeps its state (keys, counters, outbox, slots).

    On a board it is the flash root "/". On the unix port and CPython it is $CELLGUARD_FS, or the
    current folder, so tests can point it at a littlefs mount or a temporary directory.
    """
    global _fs_root
    if _fs_root is None:
        _fs_root = _host.fs_root()
    return _fs_root


def set_fs_root(path):
    global _fs_root
    _fs_root = path


def path_join(*parts):
    # os.path does not exist on MicroPython.
    out = parts[0]
    for p in parts[1:]:
        out = out + p if out.endswith("/") else out + "/" + p
    return out


# ---- byte-stream UART --------------------------------------------------------------------------
# Every UART, whatever it is underneath, offers the same four calls:
#   write(buf) -> int          blocking write of all of buf
#   readinto(buf) -> int       non-blocking: whatever is waiting (up to len(buf)), 0 if nothing
#   wait_readable(ms) -> bool  block up to ms for a byte to arrive
#   close()
class TtyStream:
    """A tty (pty or /dev/tty*) on the MicroPython unix port: termios raw mode plus select.poll.

    VMIN=0/VTIME=0 make read() return what is waiting at once, so readinto never blocks (the unix
    port's os has no read(), and a blocking file read waits for the whole buffer).
    """

    _VTIME = 5  # indexes into termios cc: the unix port's termios has no VMIN/VTIME names
    _VMIN = 6

    def __init__(self, path, baudrate=115200):
        import select
        import termios

        self._file = open(path, "r+b")
        fd = self._file.fileno()
        termios.setraw(fd)
        attrs = termios.tcgetattr(fd)
        attrs[6][self._VMIN] = 0
        attrs[6][self._VTIME] = 0
        speed = getattr(termios, "B%d" % baudrate, None)
        if speed is not None:
            attrs[4] = attrs[5] = speed
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        self._poll = select.poll()
        self._poll.register(self._file, select.POLLIN)

    def write(self, buf):
        return self._file.write(buf)

    def readinto(self, buf):
        return self._file.readinto(buf) or 0

    def wait_readable(self, timeout_ms):
        return bool(self._poll.poll(max(0, timeout_ms)))

    def close(self):
        self._file.close()


class PySerialStream:
    """CPython: any pyserial URL (a pty path, /dev/ttyUSB0, socket://, loop://)."""

    def __init__(self, url, baudrate=115200):
        import serial

        self._serial = serial.serial_for_url(url, baudrate=baudrate, timeout=0)

    def write(self, buf):
        return self._serial.write(bytes(buf))

    def readinto(self, buf):
        n = min(len(buf), self._serial.in_waiting)
        if n <= 0:
            return 0
        data = self._serial.read(n)
        buf[: len(data)] = data
        return len(data)

    def wait_readable(self, timeout_ms):
        import select

        if self._serial.in_waiting:
            return True
        fileno = getattr(self._serial, "fileno", None)
        if fileno is None:  # loop:// and friends have no fd: fall back to a short poll
            import time

            deadline = time.monotonic() + timeout_ms / 1000
            while time.monotonic() < deadline:
                if self._serial.in_waiting:
                    return True
                time.sleep(0.001)
            return False
        ready, _, _ = select.select([fileno()], [], [], max(0, timeout_ms) / 1000)
        return bool(ready)

    def close(self):
        self._serial.close()


class MachineUartStream:
    """A board's machine.UART (MicroPython) with select.poll for waiting."""

    def __init__(self, uart):
        import select

        self._uart = uart
        self._poll = select.poll()
        self._poll.register(uart, select.POLLIN)

    def write(self, buf):
        return self._uart.write(buf) or 0

    def readinto(self, buf):
        if not self._uart.any():
            return 0
        return self._uart.readinto(buf) or 0

    def wait_readable(self, timeout_ms):
        return bool(self._uart.any()) or bool(self._poll.poll(max(0, timeout_ms)))

    def close(self):
        self._uart.deinit()


class BusioUartStream:
    """CircuitPython's busio.UART created with timeout=0 (reads never block)."""

    def __init__(self, uart):
        self._uart = uart

    def write(self, buf):
        return self._uart.write(buf) or 0

    def readinto(self, buf):
        if not self._uart.in_waiting:
            return 0
        return self._uart.readinto(buf) or 0

    def wait_readable(self, timeout_ms):
        deadline = ticks_add(ticks_ms(), timeout_ms)
        while not self._uart.in_waiting:
            if ticks_diff(deadline, ticks_ms()) <= 0:
                return False
            sleep_ms(1)
        return True

    def close(self):
        self._uart.deinit()


def open_uart(port, baudrate=115200, tx=None, rx=None, rxbuf=1024):
    """Open the modem's UART as a byte stream (see the four calls above).

    port: a tty path or pyserial URL on the unix port and CPython; a UART id on a MicroPython board;
    ignored on CircuitPython, where tx/rx pin names (attributes of `board`) select the UART.
    """
    if NAME == CPYTHON:
        return PySerialStream(port, baudrate)
    if UNIX_PORT:
        return TtyStream(port, baudrate)
    if NAME == CIRCUITPYTHON:
        import board
        import busio

        uart = busio.UART(
            getattr(board, tx), getattr(board, rx), baudrate=baudrate, timeout=0, receiver_buffer_size=rxbuf
        )
        return BusioUartStream(uart)
    import machine

    kwargs = {"baudrate": baudrate, "rxbuf": rxbuf}
    if tx is not None:
        kwargs["tx"] = machine.Pin(tx)
        kwargs["rx"] = machine.Pin(rx)
    return MachineUartStream(machine.UART(port, **kwargs))


# ---- reset and watchdog ------------------------------------------------------------------------
def reset():
    """Hard-reset the board (machine.reset / microcontroller.reset). On a host: SystemExit(75)."""
    if NAME == CIRCUITPYTHON:
        import microcontroller

        microcontroller.reset()
    elif HOST:
        raise SystemExit(75)  # a host has nothing to reset: the process ends, the test sees 75
    else:
        import machine

        machine.reset()


class _HostWatchdog:
    # A host has no watchdog: this one only remembers when it was last fed, so tests can check.
    def __init__(self, timeout_ms):
        self.timeout_ms = timeout_ms
        self.fed = 0

    def feed(self):
        self.fed += 1


class _CpyWatchdog:
    # CircuitPython: microcontroller.watchdog takes its timeout in seconds (a float) and starts when
    # its mode is set; WatchDogMode.RESET resets the board when it expires.
    def __init__(self, timeout_ms):
        import microcontroller
        from watchdog import WatchDogMode

        self._wdt = microcontroller.watchdog
        self._wdt.timeout = timeout_ms / 1000
        self._wdt.mode = WatchDogMode.RESET
        self.timeout_ms = timeout_ms

    def feed(self):
        self._wdt.feed()


def watchdog(timeout_ms):
    """Start the hardware watchdog; returns an object with feed(). Once started it cannot be stopped.

    MicroPython: machine.WDT(timeout=ms) (the RP2040 caps it at 8388 ms). CircuitPython:
    microcontroller.watchdog in RESET mode. A host gets a stand-in that counts feeds.
    """
    if NAME == CIRCUITPYTHON:
        return _CpyWatchdog(timeout_ms)
    if HOST:
        return _HostWatchdog(timeout_ms)
    import machine

    return machine.WDT(timeout=timeout_ms)
