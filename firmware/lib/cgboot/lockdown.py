# The last line of defence of a locked console: what holds the serial port when the application
# cannot run at all (no slot verifies, the image fails to import, main.py raises outside its own
# console). It imports nothing from the application, so a broken image cannot break it.
#
# A locked unit (state/console.json says so, as cellguard.consolelock reads it) must never fall into
# the Python REPL: hold() turns Ctrl-C into an ordinary byte, answers every line with one refusal,
# and resets the board after retry_s to try booting again (a transient fault clears; a corrupt
# image stays refused and the unit keeps holding the port). There is no service action here: a unit
# that cannot boot a signed image is re-flashed with its runtime (docs/boot.md, "Lockdown").
#
# Every refusal carries the reason (REFUSAL below), so a technician's cellguard status can say "the
# unit is in lockdown: <reason>" instead of "does not answer". Reasons are the boot part's own
# words or an exception's repr, cut to REASON_MAX characters; no key or identifier is ever in one.
import sys

CONSOLE_FILE = "state/console.json"
RETRY_S = 300
_POLL_MS = 200
REASON_MAX = 100
# One line per refusal; cellguard status matches it (LOCKDOWN_RE there). It ends as the old burst
# answer did, so a reader that waits for "(console locked)" still finds it.
REFUSAL = "lockdown (%s): error: input ignored (console locked)\n"
DROPPED = "lockdown: %d line(s) refused without an answer (console busy or not read)\n"
_REFUSALS = 8  # refusals written per second at most


def _root():
    from cgboot import host

    return host.fs_root()


def is_circuitpython():
    # As cellguard.runtime decides it (not imported: the application may be what is broken).
    from cgboot import host

    return host.runtime_name() == "circuitpython"


def is_locked(root=None):
    """As cellguard.consolelock.is_locked(): no record means unlocked; an unreadable one locks."""
    import json
    import os

    if root is None:
        root = _root()
    path = root + CONSOLE_FILE if root.endswith("/") else root + "/" + CONSOLE_FILE
    try:
        with open(path) as f:
            return bool(json.load(f).get("locked"))
    except (OSError, ValueError, AttributeError):
        try:
            os.stat(path)
        except OSError:
            return False
        return True


def refusal(reason):
    """The one line every input line gets: the reason on one line, cut short."""
    text = str(reason).replace("\r", " ").replace("\n", " ")
    return REFUSAL % text[:REASON_MAX]


def _interrupt_off():
    try:
        import micropython

        micropython.kbd_intr(-1)
    except (ImportError, AttributeError):
        pass


def _reset():
    try:
        import machine

        machine.reset()
    except (ImportError, AttributeError):
        pass
    try:
        import microcontroller  # CircuitPython

        microcontroller.reset()
    except (ImportError, AttributeError):
        pass
    raise SystemExit(75)  # the unix port: the harness restarts the "chip"


def _clock():
    # (ticks_ms, diff): MicroPython's time.ticks_*, or CircuitPython's supervisor.ticks_ms, which
    # wraps at 2**29 and has no ticks_diff in the core; CPython (host tests) counts monotonic ms.
    import time

    if hasattr(time, "ticks_ms"):
        return time.ticks_ms, time.ticks_diff
    try:
        import supervisor
    except ImportError:
        return (lambda: int(time.monotonic() * 1000)), (lambda a, b: a - b)

    half = 1 << 28

    def diff(a, b):
        return ((a - b + half) & ((1 << 29) - 1)) - half

    return supervisor.ticks_ms, diff


def hold(reason, retry_s=None, read_byte=None, write=None, reset=_reset, clock=None):
    """Never returns: refuse every input line on the console until it is time to reset and retry.

    retry_s defaults to RETRY_S (read at the call, so a test can shorten it); read_byte(timeout_ms)
    -> int or None, write(str), clock() -> ms: injectable for tests."""
    _interrupt_off()
    if retry_s is None:
        retry_s = RETRY_S
    if read_byte is None or write is None:
        read_byte, write = _stdio()
    if clock is None:
        clock, diff = _clock()
    else:

        def diff(a, b):
            return a - b

    write("cgboot: console locked; the firmware cannot run (%s); retrying in %d s\n" % (str(reason)[:120], retry_s))
    line = refusal(reason)
    start = clock()
    while True:
        try:
            _refuse_until(start, retry_s * 1000, read_byte, write, clock, diff, line)
            break
        except KeyboardInterrupt:  # kbd_intr(-1) failed on this port: still nothing reaches the REPL
            pass
    reset()


def _refuse_until(start, limit_ms, read_byte, write, clock, diff, line):
    # Each input line (CR, LF or CR LF) gets the refusal at once; bytes without a line end (a Ctrl-C
    # storm, mpremote's raw-REPL bytes) get one when the port falls quiet. At most _REFUSALS per
    # second are written, and a refusal the port does not take at once is dropped (write() returns
    # False): a flood, or a reader that does not read, never keeps the loop from its reset. What
    # was dropped is said in one line: when the port is quiet, each second of a flood, and once
    # more before the reset (a flood that outlasts the hold is never quiet, and a slow chip may
    # not see a second turn before its limit).
    pending = False
    last = None
    dropped = 0
    second = clock()
    sent = 0
    while diff(clock(), start) < limit_ms:
        b = read_byte(_POLL_MS)
        now = clock()
        if diff(now, second) >= 1000:
            second, sent = now, 0
        if b is None:
            answer, pending = pending, False
        else:
            answer = b == 13 or (b == 10 and last != 13)
            if answer:
                pending = False
            elif b != 10:
                pending = True
            last = b
        if answer:
            if sent < _REFUSALS and write(line) is not False:
                sent += 1
            else:
                dropped += 1
        elif dropped and (b is None or not sent) and sent < _REFUSALS and write(DROPPED % dropped) is not False:
            sent += 1  # when the port is quiet, or first in a second of a flood
            dropped = 0
    if dropped:
        write(DROPPED % dropped)  # one line over the second's bound, and only if the port takes it


def _stdio():
    if is_circuitpython():
        return _cpy_stdio()
    import select

    buf = getattr(sys.stdin, "buffer", sys.stdin)
    poller = select.poll()
    poller.register(sys.stdin, select.POLLIN)

    def read_byte(timeout_ms):
        if not poller.poll(timeout_ms):
            return None
        b = buf.read(1)
        if not b:  # the end of input (a host's closed pipe): wait as a quiet port would
            import time

            time.sleep(timeout_ms / 1000)
            return None
        return b[0]

    out = select.poll()
    out.register(sys.stdout, select.POLLOUT)

    def write(s):
        # Only when the port takes it at once (a line is far below a pipe's or a CDC's buffer):
        # a reader that does not read must not hold the loop (False: dropped).
        if not out.poll(0):
            return False
        sys.stdout.write(s)
        if hasattr(sys.stdout, "flush"):
            sys.stdout.flush()

    return read_byte, write


def _cpy_stdio():
    # CircuitPython's stdin cannot be polled with select (docs/runtimes.md, "serial console"): as the
    # application's console does, a shipped unit answers on the data CDC (usb_cdc.data, which its
    # boot.py enabled) and an unlocked one waits on supervisor.runtime.serial_bytes_available.
    import time

    import usb_cdc

    port = usb_cdc.data
    if port is not None:
        return _stream_stdio(port, time)
    import supervisor

    def ready():
        return supervisor.runtime.serial_bytes_available

    def read_one():
        c = sys.stdin.read(1)
        return ord(c) if c else None

    def write(s):
        sys.stdout.write(s)

    return _waiting(ready, read_one, time), write


def _stream_stdio(port, time):
    one = bytearray(1)
    try:
        port.write_timeout = 0  # usb_cdc.Serial: write what the host's buffer takes, never wait
    except AttributeError:
        pass

    def read_one():
        return one[0] if port.readinto(one) else None

    def write(s):
        data = s.encode()
        return port.write(data) == len(data)  # False: the host did not take it (dropped)

    return _waiting(lambda: port.in_waiting, read_one, time), write


def _waiting(ready, read_one, time):
    # read_byte(timeout_ms) over a port that can only say whether a byte waits: check every 1 ms.
    def read_byte(timeout_ms):
        for _ in range(timeout_ms):
            if ready():
                return read_one()
            time.sleep(0.001)
        return None

    return read_byte
