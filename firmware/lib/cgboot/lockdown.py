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
# unit is in lockdown: <reason>" instead of "does not answer"; mpremote, whose raw-REPL entry gets
# the banner it waits for (cgboot.rawrefusal, as a locked application console answers it), prints
# the reason as its error and exits at once (RAW_REASON) instead of waiting for ever. Reasons are the boot part's own
# words or an exception's repr, cut to REASON_MAX characters; no key or identifier is ever in one.
import sys

CONSOLE_FILE = "state/console.json"
RETRY_S = 300
_POLL_MS = 200
REASON_MAX = 100
# One line per refusal; cellguard status matches it (LOCKDOWN_RE there). It ends as the old burst
# answer did, so a reader that waits for "(console locked)" still finds it.
REFUSAL = "lockdown (%s): error: input ignored (console locked)\n"
# mpremote's raw-REPL entry gets cgboot.rawrefusal's answers with this as the error output: mpremote
# prints it and exits 1 at once (it waited for ever for a banner before).
RAW_REASON = ("locked console: the unit is in lockdown (%s); its firmware cannot run and there is no "
              "REPL: re-flash it with its runtime (docs/field-guide.md, 'Lockdown')")
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
    return REFUSAL % _one_line(reason)


def raw_refusal(reason):
    """What mpremote prints as the device's error when it tries to run code here."""
    return RAW_REASON % _one_line(reason)


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
    answers = _Answers(write, clock(), diff, reason)
    start = clock()
    while True:
        try:
            _refuse_until(start, retry_s * 1000, read_byte, clock, diff, answers)
            break
        except KeyboardInterrupt:  # kbd_intr(-1) failed on this port: still nothing reaches the REPL
            pass  # (the answers' state and bounds carry on: an interrupt resets none of them)
    answers.finish()
    reset()


def _refuse_until(start, limit_ms, read_byte, clock, diff, answers):
    while diff(clock(), start) < limit_ms:
        b = read_byte(_POLL_MS)
        answers.turn(b, clock())


def _one_line(reason):
    # The reason on one short line of text: no line end, and no control byte (a \x04 would end
    # mpremote's error output early).
    text = "".join(c if c >= " " else " " for c in str(reason))
    return text[:REASON_MAX]


class _Answers:
    """What hold() writes for what arrives, within its bounds.

    Each input line (CR, LF or CR LF) gets the refusal at once; bytes without a line end (a Ctrl-C
    storm) get one when the port falls quiet. Ctrl-A (mpremote entering the raw REPL) is answered
    by cgboot.rawrefusal with the reason as the error output, until Ctrl-B, so mpremote stops at
    once and says why. At most _REFUSALS writes a second, and a write the port does not take at
    once is not retried (write() returns False): a flood, or a reader that does not read, never
    keeps the loop from its reset. A refusal line over the bound is dropped and counted; what was
    dropped is said in one line: when the port is quiet, each second of a flood, and once more
    before the reset (a flood that outlasts the hold is never quiet, and a slow chip may not see a
    second turn before its limit). An answer to mpremote over the bound waits for the next second
    instead (only the latest: mpremote waits for each answer before it sends more, and a dropped
    one would leave it waiting for ever on a pty); the count waits while mpremote is in the raw
    REPL, where a line of text would break its framing."""

    def __init__(self, write, now, diff, reason):
        self.write = write
        self.diff = diff
        self.line = refusal(reason)
        self.raw_reason = raw_refusal(reason)
        self.second = now
        self.sent = 0
        self.dropped = 0
        self.pending = False  # bytes without a line end since the last answer
        self.last = None
        self.raw = None  # a RawRefusal while mpremote's raw-REPL handshake lasts
        self.deferred = None  # an answer to mpremote that waits for the next second

    def turn(self, b, now):
        """One poll of the port: b is the byte read, or None when it was quiet."""
        if self.diff(now, self.second) >= 1000:
            self.second, self.sent = now, 0
        if self.deferred is not None and self._send(self.deferred):
            self.deferred = None
        if b is not None and self.raw is not None:
            self._raw_byte(b)
            return
        if b == 1:
            self._enter_raw()
            return
        if self._line_byte(b):
            self._refuse()
        elif self.dropped and (b is None or not self.sent) and self.raw is None and self.deferred is None:
            self._count()  # when the port is quiet, or first in a second of a flood

    def finish(self):
        if self.dropped:
            self.write(DROPPED % self.dropped)  # one line over the second's bound, and only if the port takes it

    def _line_byte(self, b):
        # True when this poll ends a line (or a quiet port ends a burst): it gets the refusal.
        if b is None:
            answer, self.pending = self.pending, False
            return answer
        answer = b == 13 or (b == 10 and self.last != 13)
        if answer:
            self.pending = False
        elif b != 10:
            self.pending = True
        self.last = b
        return answer

    def _enter_raw(self):
        from cgboot.rawrefusal import RawRefusal

        if self.pending:  # the burst before the Ctrl-A still gets its one refusal, first
            self.pending = False
            self._refuse()
        self.last = 1
        self.raw = RawRefusal(self._to_mpremote, self.raw_reason)
        self.raw.start()

    def _raw_byte(self, b):
        if self.raw.feed(b):  # Ctrl-B: back to refusing lines; the port's next quiet gets one
            self.raw = None
            self.pending = True
            self.last = b

    def _to_mpremote(self, text):
        if not self._send(text):
            if self.deferred is not None:
                self.dropped += 1  # an older answer nobody waited for: only the latest is kept
            self.deferred = text

    def _refuse(self):
        if not self._send(self.line):
            self.dropped += 1

    def _count(self):
        if self._send(DROPPED % self.dropped):
            self.dropped = 0

    def _send(self, text):
        # One write within the bounds: False when over this second's or the port did not take it.
        if self.sent < _REFUSALS and self.write(text) is not False:
            self.sent += 1
            return True
        return False


def _stdio():
    if is_circuitpython():
        return _cpy_stdio()
    import select

    buf = getattr(sys.stdin, "buffer", sys.stdin)
    # CPython (host tests): the unbuffered file under it. Its buffered reader takes in all that
    # waits and hands out one byte, and the rest is never polled readable again (mpremote's
    # "\r\x01" got no banner).
    buf = getattr(buf, "raw", buf)
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
