# The console's serial port on each runtime (cellguard/console.py runs the console over it): reading
# a byte without waiting longer than asked, and writing without waiting for a reader that does not
# read (Output: a bounded queue the console's answers go through). Its own module so the console
# compiles in a small heap beside the AT engine.
from cellguard import consolelock, runtime

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_OUT_MAX = const(4096)  # answers queued for the port; more is dropped, and one line says so
_SEND_MAX = const(1024)  # bytes sent per turn of the main loop
_CHUNK = const(128)  # per write: what a port that says it is writable takes without blocking


def stdio(poll_ms=None):
    """(read_byte, write) on the console port. read_byte(wait_ms=poll_ms) waits at most wait_ms
    (None: until a byte comes) and returns None when nothing came, so the caller can do other work.
    write(s, nowait=False) sends it all; with nowait only what the port takes at once (the count)."""
    if runtime.NAME == runtime.CIRCUITPYTHON:
        return _cpy_stdio(poll_ms)
    import select
    import sys

    buf = getattr(sys.stdin, "buffer", None)
    if buf is not None:

        def read_one():
            b = buf.read(1)
            return b[0] if b else -1

    else:  # CircuitPython: sys.stdin.read(1) gives a str

        def read_one():
            c = sys.stdin.read(1)
            return ord(c) if c else -1

    poller = select.poll()
    poller.register(sys.stdin, select.POLLIN)

    def read_byte(wait_ms=poll_ms):
        return read_one() if poller.poll(-1 if wait_ms is None else wait_ms) else None

    out = getattr(sys.stdout, "buffer", sys.stdout)
    ready = select.poll()
    ready.register(sys.stdout, select.POLLOUT)

    def write(s, nowait=False):
        if isinstance(s, str):
            s = s.encode()
        if nowait:
            if not ready.poll(0):
                return 0  # nobody reads the port: never wait for them
            s = s[:_CHUNK]
        n = out.write(s)
        if hasattr(out, "flush"):
            out.flush()
        return len(s) if n is None else n

    return read_byte, write


def _cpy_stdio(poll_ms):
    # CircuitPython: stdin cannot be polled with select; supervisor.runtime.serial_bytes_available
    # says whether a read would wait. A shipped (locked) unit has no REPL CDC at all: boot.py turned
    # it off, and the console runs on the data CDC instead (cpy_boot.status_port()).
    from cellguard import cpy_boot

    port = cpy_boot.status_port() if consolelock.is_locked() else None
    if port is not None:
        return _stream_stdio(port, poll_ms)
    import sys

    import supervisor

    def read_byte(wait_ms=poll_ms):
        if wait_ms is not None:
            deadline = runtime.ticks_add(runtime.ticks_ms(), wait_ms)
            while not supervisor.runtime.serial_bytes_available:
                if runtime.ticks_diff(deadline, runtime.ticks_ms()) <= 0:
                    return None
                runtime.sleep_ms(1)
        c = sys.stdin.read(1)
        return ord(c) if c else -1

    def write(s, nowait=False):
        sys.stdout.write(s if isinstance(s, str) else bytes(s).decode())
        return len(s)

    return read_byte, write


def _stream_stdio(port, poll_ms):
    # A runtime stream (write/readinto/wait_readable); it has no end of input, so never -1.
    one = bytearray(1)

    def read_byte(wait_ms=poll_ms):
        while not port.wait_readable(1000 if wait_ms is None else wait_ms):
            if wait_ms is not None:
                return None
        return one[0] if port.readinto(one) else None

    def write(s, nowait=False):
        # The data CDC writes without waiting (cpy_boot.status_port): the count is what it took.
        return port.write(s.encode() if isinstance(s, str) else s)

    return read_byte, write


class Output:
    """The console's answers on their way to the port: queued up to _OUT_MAX bytes and sent as the
    port takes them, never waiting for a reader that does not read. What does not fit is dropped,
    and one line says how much once there is room again."""

    def __init__(self, write, size=_OUT_MAX):
        self._send = write
        self._buf = bytearray()
        self._size = size
        self.dropped = 0

    def write(self, s):
        data = s.encode() if isinstance(s, str) else s
        if len(self._buf) + len(data) > self._size:
            self.dropped += len(data)
            return
        if self.dropped:
            note = b"\nerror: %d byte(s) of console output dropped (the port was not read)\n" % self.dropped
            if len(self._buf) + len(note) + len(data) > self._size:
                self.dropped += len(data)
                return
            self._buf.extend(note)
            self.dropped = 0
        self._buf.extend(data)

    def flush(self, wait_ms=0):
        """Send at most _SEND_MAX bytes, waiting up to wait_ms for the port to take them."""
        sent = 0
        while self._buf and sent < _SEND_MAX:
            n = self._send(memoryview(self._buf)[:_CHUNK], True)
            if not n:
                if wait_ms <= 0:
                    return
                runtime.sleep_ms(10)
                wait_ms -= 10
                continue
            self._buf = self._buf[n:]
            sent += n
