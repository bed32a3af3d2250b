# AT command engine: line assembly, final results, URC dispatch, prompts, timeouts, recovery.
#
# Design (docs/modem.md): a poll-driven, synchronous engine over the platform byte stream
# (runtime.open_uart: write / readinto / wait_readable / close). A command call writes the command
# and pumps the stream until its final result or its deadline; every line that arrives meanwhile is
# routed: URCs to their handlers (even between the lines of the response), the rest to the
# response. Between commands the firmware calls poll() from its main loop, so URCs are handled
# without a command running. No asyncio: the same code runs on every runtime, nothing needs a
# scheduler, and a command's deadline is the only place that ever waits.
#
# Memory: the line buffer and the read chunk are allocated once. A URC line is handed to its
# handler as (buf, n) - the shared buffer and the line length - so dispatching a URC allocates
# nothing; only response lines of a running command are copied to bytes.
try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from cellguard import runtime
from cellguard.atline import (  # noqa: F401  (re-exported: at.LineReader, at.field_int, ...)
    LineReader,
    _text,
    field_count,
    field_int,
    field_start,
    fields,
)

DEFAULT_TIMEOUT_MS = 5000
# Commands that take long on a real modem (3GPP and vendor manuals give these maxima).
SLOW_COMMANDS = (
    (b"AT+COPS", 180000),
    (b"AT+CGACT", 150000),
    (b"AT+QIACT", 150000),
    (b"AT+QIOPEN", 150000),
    (b"AT+CNACT", 150000),
    (b"AT+CAOPEN", 150000),
    (b"AT+CFUN", 30000),
    (b"AT+CLCK", 15000),
    (b"AT+CPWD", 15000),
    (b"AT+CPIN=", 15000),
    (b"AT+USOCR", 30000),
    (b"AT#XSOCKET", 30000),
)

# Final result codes. The vendor ones: SEND OK / SEND FAIL (Quectel), NO CARRIER, ABORTED.
_FINAL_OK = (b"OK", b"SEND OK")
_FINAL_ERROR = (b"ERROR", b"SEND FAIL", b"NO CARRIER", b"ABORTED")
_CME = b"+CME ERROR:"
_CMS = b"+CMS ERROR:"

# Commands whose arguments are secrets: the SIM PIN/PUK (+CPIN=, +CLCK=, +CPWD=) and the APN
# password (+CGAUTH=, Quectel +QICSGP=, SIMCom +CNCFG=). Wherever a command goes into an exception
# message, a log line or the status page, redact() keeps only its name (the console is not
# authenticated). The exception's .command attribute is redacted too, so logging it is safe.
SECRET_COMMANDS = (b"AT+CPIN=", b"AT+CLCK=", b"AT+CPWD=", b"AT+CGAUTH=", b"AT+QICSGP=", b"AT+CNCFG=")
_REDACTED = b"<redacted>"

# A reply keeps at most this many lines (engine.max_reply_lines) and 2 x max_line bytes
# (engine.max_reply_bytes: a datagram's hex line plus its header fits): a modem flooding lines
# into one reply must not be able to exhaust the heap. The rest is dropped: ReplyTooLong.
MAX_REPLY_LINES = 32

# What a running command ended with.
_PENDING = const(0)
_DONE_OK = const(1)
_DONE_ERROR = const(2)
_DONE_REBOOT = const(3)


def redact(cmd):
    """cmd as it may be shown: a secret-carrying command keeps its name, b"AT+CPIN=<redacted>"."""
    if isinstance(cmd, str):
        cmd = cmd.encode()
    head = bytes(cmd[:12]).upper()
    for prefix in SECRET_COMMANDS:
        if head.startswith(prefix):
            return prefix + _REDACTED
    return cmd


# ---- errors ----------------------------------------------------------------------------------
class ModemError(Exception):
    """Base of every modem-side error (AT engine, driver, sockets). Not an OSError."""


class AtTimeout(ModemError):
    """No final result before the deadline. .command, .lines (the partial response)."""

    def __init__(self, command, lines):
        command = redact(command)
        super().__init__("timeout: %s" % _text(command))
        self.command = command
        self.lines = lines


class AtCommandError(ModemError):
    """The modem answered with an error result. .code is None for a bare ERROR, .result the line."""

    def __init__(self, command, lines, result, code=None):
        command = redact(command)
        super().__init__("%s -> %s" % (_text(command), _text(result)))
        self.command = command
        self.lines = lines
        self.result = result
        self.code = code


class CmeError(AtCommandError):
    """+CME ERROR: <code> (3GPP TS 27.007 9.2): equipment/SIM/network errors."""


class CmsError(AtCommandError):
    """+CMS ERROR: <code> (3GPP TS 27.005): message service errors."""


class ModemRebooted(ModemError):
    """The modem restarted (RDY / Ready / echo back on) while a command was running."""

    def __init__(self, command, lines):
        command = redact(command)
        super().__init__("modem rebooted during %s" % _text(command))
        self.command = command
        self.lines = lines


class ReplyError(ModemError):
    """The modem answered OK but the reply could not be parsed (missing or malformed fields)."""


def parses_reply(fn):
    """Decorator for driver methods that parse replies: a malformed reply (noise, a firmware
    variant) becomes ReplyError instead of a ValueError/IndexError deep in the parsing."""

    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, IndexError, TypeError, AttributeError, KeyError) as e:
            raise ReplyError("unexpected reply in %s: %r" % (fn.__name__, e))

    return wrapper


class ReplyTooLong(ModemError):
    """The reply went past engine.max_reply_lines / max_reply_bytes; the rest was dropped (the
    command still ran to its final result, so the engine stays in step). .command, .lines."""

    def __init__(self, command, lines):
        command = redact(command)
        super().__init__("reply to %s too long: kept %d lines, dropped the rest" % (_text(command), len(lines)))
        self.command = command
        self.lines = lines


class ModemBusy(ModemError):
    """A command was started while another one is waiting (e.g. from the engine's idle callback)."""


class ModemUnresponsive(ModemError):
    """Recovery failed: no answer to AT after resync, AT+CFUN reset, the reset pin and power key."""


# ---- the engine --------------------------------------------------------------------------------
class AtEngine:
    """Runs AT commands over a byte stream and dispatches URCs.

    stream: the four-call platform stream. reset_pin: optional callable from the board that pulses
    the modem's reset line (a late step of recovery). power_key: optional callable that pulses the
    modem's power key (PWRKEY; Modem.power_up, and the last step of recovery). boot_urcs: lines a
    modem prints when it (re)starts. log: optional callable(str) for recovery events. idle:
    optional callable run at least every ~50 ms while the engine waits (see docs/modem.md).
    """

    def __init__(self, stream, max_line=256, reset_pin=None, boot_urcs=(b"RDY", b"Ready"), log=None,
                 power_key=None, idle=None):
        self._stream = stream
        self._rx = bytearray(64)
        self.reader = LineReader(self._on_line, max_line, self._on_prompt)
        self._urcs = []
        self._boot_urcs = boot_urcs
        self._reset_pin = reset_pin
        self.power_key = power_key
        self.idle = idle
        self._log = log
        self.default_timeout_ms = DEFAULT_TIMEOUT_MS
        self.timeouts = SLOW_COMMANDS
        self.reset_wait_ms = 10000  # how long a modem may take to answer AT after a reset
        self.resync_attempts = 5
        self.resync_timeout_ms = 500
        self.reset_cmd = b"AT+CFUN=1,1"  # the dialect sets its own (AT+CFUN=15, AT#XRESET)
        self.echo_off = False  # set by the driver after ATE0: an echo after that means a reboot
        self.max_reply_lines = MAX_REPLY_LINES
        self.max_reply_bytes = 2 * max_line
        # A line half-received when a command starts gets this long to end (a URC on its way);
        # then it is dropped, so that it never becomes part of the new command's reply.
        self.partial_grace_ms = 50
        self.partials_dropped = 0
        # Command state.
        self._cmd = None
        self._prefix = None
        self._lines = []
        self._state = _PENDING
        self._result = None
        self._prompted = False
        self._reply_bytes = 0
        self._dropped = 0
        self._in_idle = False
        # Counters (status / tests).
        self.rebooted = False
        self.restarted_ms = None  # ticks_ms of the last restart seen (boot line or reset)
        self.reboots = 0
        self.unsolicited = 0
        self.recoveries = 0
        self.idle_errors = 0

    # -- URC registry
    def add_urc(self, prefix, handler, is_urc=None):
        """handler(buf, n) for lines starting with prefix. is_urc(buf, n) -> bool decides, for a
        line that is also the running command's reply prefix (+CEREG:), whether it is the URC."""
        self._urcs.append((prefix, handler, is_urc))

    def busy(self):
        """True while a command waits for its result (URC handlers use it to tell idle lines)."""
        return self._cmd is not None and self._state == _PENDING

    # -- stream pumping
    def _pump(self):
        rx = self._rx
        stream = self._stream
        for _ in range(64):  # bounded: a flooding modem cannot starve the caller forever
            n = stream.readinto(rx)
            if not n:
                return
            self.reader.feed(rx, 0, n)

    def _idle(self):
        # Lets the rest of the firmware (the console) run while the engine waits: called once per
        # wait step, and a wait step is at most 50 ms. Never re-entered; its errors are counted,
        # never allowed to break the command that is waiting.
        idle = self.idle
        if idle is None or self._in_idle:
            return
        self._in_idle = True
        try:
            idle()
        except Exception as e:  # noqa: BLE001
            self.idle_errors += 1
            if self.idle_errors == 1:
                self._note("idle callback failed: %r" % (e,))
        finally:
            self._in_idle = False

    def poll(self, timeout_ms=0):
        """Process what has arrived (URCs), waiting up to timeout_ms for the first byte."""
        if self._stream.wait_readable(timeout_ms):
            self._pump()

    def wait_for(self, predicate, timeout_ms):
        """Pump the stream until predicate() is true; False at the deadline."""
        deadline = runtime.ticks_add(runtime.ticks_ms(), timeout_ms)
        while not predicate():
            left = runtime.ticks_diff(deadline, runtime.ticks_ms())
            if left <= 0:
                return False
            if self._stream.wait_readable(left if left < 50 else 50):
                self._pump()
            self._idle()
        return True

    def drain(self, quiet_ms=30, max_ms=500):
        """Discard (well, dispatch) input until the line has been quiet for quiet_ms."""
        deadline = runtime.ticks_add(runtime.ticks_ms(), max_ms)
        while runtime.ticks_diff(deadline, runtime.ticks_ms()) > 0:
            if not self._stream.wait_readable(quiet_ms):
                return
            self._pump()
            self._idle()

    # -- line routing
    def _on_prompt(self):
        self._prompted = True

    def _on_line(self, buf, n):
        cmd = self._cmd
        if cmd is not None and self._state != _PENDING:
            cmd = None  # the command has its result: what follows is not its reply
        if cmd is not None:
            if self._final(buf, n):
                return
            if (buf[0] == 65 or buf[0] == 97) and n > 1 and (buf[1] == 84 or buf[1] == 116):
                # Echo of a command ("AT..."). With echo off it means the modem restarted.
                if self.echo_off and n == len(cmd) and buf.startswith(cmd):
                    self._reboot_seen()
                return
        for prefix, handler, is_urc in self._urcs:
            if n >= len(prefix) and buf.startswith(prefix):
                reply = self._prefix
                if cmd is not None and reply is not None and n >= len(reply) and buf.startswith(reply):
                    if is_urc is None or not is_urc(buf, n):
                        break  # the running command's reply
                handler(buf, n)
                return
        for boot in self._boot_urcs:
            if n == len(boot) and buf.startswith(boot):
                self._reboot_seen()
                return
        if cmd is not None:
            self._reply_bytes += n
            if len(self._lines) < self.max_reply_lines and self._reply_bytes <= self.max_reply_bytes:
                self._lines.append(bytes(buf[:n]))
            else:
                self._dropped += 1
        else:
            self.unsolicited += 1

    def restarted_within(self, ms):
        """True if a restart was seen less than ms ago."""
        t = self.restarted_ms
        return t is not None and runtime.ticks_diff(runtime.ticks_ms(), t) < ms

    def _reboot_seen(self):
        self.rebooted = True
        self.restarted_ms = runtime.ticks_ms()
        self.reboots += 1
        self.echo_off = False
        if self._log:
            self._log("modem restarted")
        if self._cmd is not None:
            self._state = _DONE_REBOOT

    def _final(self, buf, n):
        for word in _FINAL_OK:
            if n == len(word) and buf.startswith(word):
                self._state = _DONE_OK
                return True
        for word in _FINAL_ERROR:
            if n == len(word) and buf.startswith(word):
                self._result = bytes(buf[:n])
                self._state = _DONE_ERROR
                return True
        if n >= 11 and (buf.startswith(_CME) or buf.startswith(_CMS)):  # len(b"+CME ERROR:")
            self._result = bytes(buf[:n])
            self._state = _DONE_ERROR
            return True
        return False

    def timeout_for(self, cmd):
        for prefix, ms in self.timeouts:
            if cmd.startswith(prefix):
                return ms
        return self.default_timeout_ms

    # -- commands
    def command(self, cmd, timeout_ms=None, prefix=None, payload=None, prompt=b">", raw_prefix=None,
                raw_field=0):
        """Run one command; return its response lines (list of bytes, echo and URCs removed).

        prefix: the reply's prefix (b"+CEREG:"), so a URC with the same prefix is told apart.
        payload: bytes sent after the prompt byte (`prompt`, b">" or b"@") appears.
        raw_prefix, raw_field: a reply line that carries length-prefixed raw bytes (see LineReader).
        Raises AtTimeout, CmeError, CmsError, AtCommandError or ModemRebooted.
        """
        if isinstance(cmd, str):
            cmd = cmd.encode()
        if self._cmd is not None:
            raise ModemBusy("%s while %s waits" % (_text(redact(cmd)), _text(redact(self._cmd))))
        if timeout_ms is None:
            timeout_ms = self.timeout_for(cmd)
        self._pump()  # URCs that arrived before this command are not its reply
        reader = self.reader
        if reader.pending():
            self._start_clean(reader)
        self._cmd = cmd
        self._prefix = prefix
        self._lines = []
        self._state = _PENDING
        self._result = None
        self._prompted = False
        self._reply_bytes = 0
        self._dropped = 0
        reader.raw_prefix = raw_prefix
        reader.raw_field = raw_field
        reader.prompt = prompt[0] if payload is not None else None
        deadline = runtime.ticks_add(runtime.ticks_ms(), timeout_ms)
        try:
            self._stream.write(cmd + b"\r")
            if payload is not None:
                try:
                    self._wait(deadline, True)
                except AtTimeout:
                    # The prompt was lost, but the modem may be waiting for exactly len(payload)
                    # bytes and would swallow our recovery commands. Fill that read with NULs (a
                    # zero datagram at worst; the payload itself is never sent unprompted, and
                    # NULs without CR cannot form a command if it was not waiting).
                    self._stream.write(bytes(len(payload)))
                    raise
                if self._state == _PENDING:
                    self._stream.write(payload)
            self._wait(deadline, False)
            lines = self._lines
            if self._dropped and self._state != _DONE_REBOOT:
                raise ReplyTooLong(cmd, lines)
            if self._state == _DONE_OK:
                return lines
            if self._state == _DONE_REBOOT:
                raise ModemRebooted(cmd, lines)
            result = self._result
            if result.startswith(_CME):
                raise CmeError(cmd, lines, result, _code(result))
            if result.startswith(_CMS):
                raise CmsError(cmd, lines, result, _code(result))
            raise AtCommandError(cmd, lines, result)
        except AtTimeout:
            reader.reset()  # what it left half-received is its own, never the next command's
            raise
        finally:
            self._cmd = None
            self._prefix = None
            reader.prompt = None
            reader.raw_prefix = None

    def _start_clean(self, reader):
        # Part of a line is in the buffer: a URC on its way gets partial_grace_ms to end and is
        # dispatched; anything else (the rest of an old reply, noise) is dropped.
        # (Not wait_for: idle() must not run before this command is marked as running.)
        deadline = runtime.ticks_add(runtime.ticks_ms(), self.partial_grace_ms)
        while reader.pending():
            left = runtime.ticks_diff(deadline, runtime.ticks_ms())
            if left <= 0:
                break
            if self._stream.wait_readable(left if left < 10 else 10):
                self._pump()
        if reader.pending():
            reader.reset()
            self.partials_dropped += 1

    def _wait(self, deadline, for_prompt):
        stream = self._stream
        while self._state == _PENDING and not (for_prompt and self._prompted):
            left = runtime.ticks_diff(deadline, runtime.ticks_ms())
            if left <= 0:
                raise AtTimeout(self._cmd, self._lines)
            if stream.wait_readable(left if left < 50 else 50):
                self._pump()
            if self._state == _PENDING:  # (idle may look at busy(): only while still waiting)
                self._idle()

    # -- recovery
    def resync(self, attempts=0, timeout_ms=0):
        """Send AT until OK (a late reply to an old command is drained first); True when in sync."""
        attempts = attempts or self.resync_attempts
        timeout_ms = timeout_ms or self.resync_timeout_ms
        for attempt in range(attempts):
            if attempt:
                self.drain()  # let a burst of stale output pass before trying again
            self.reader.reset()
            try:
                self.command(b"AT", timeout_ms)
                self.drain(10)  # a late reply to an older command must not meet the next one
                return True
            except ModemError:
                pass
        return False

    def recover(self):
        """Resync; else the modem's reset command (reset_cmd, AT+CFUN=1,1 by default); else the
        board's reset pin; else its power key. Returns which step worked: "resync", "cfun",
        "pin" or "pwrkey"."""
        self.recoveries += 1
        if self.resync():
            return "resync"
        self._note("resync failed: reset command")
        try:
            self.command(self.reset_cmd, 2000)
        except ModemError:
            pass
        if self._wait_alive():
            return "cfun"
        if self._reset_pin is not None:
            self._note("AT+CFUN reset failed: reset pin")
            self._reset_pin()
            if self._wait_alive():
                return "pin"
        if self.power_key is not None and self.power_cycle():
            return "pwrkey"
        raise ModemUnresponsive("no answer after resync, AT+CFUN reset, reset pin and power key")

    def power_cycle(self):
        """Pulse the power key until the modem answers AT; True if it does. A power key toggles:
        on a modem that is on but hung the first pulse switches it off, so a second one may be
        needed to switch it on again."""
        for attempt in range(2):
            self._note("no answer to AT: power key pulse")
            self.power_key()
            if self._wait_alive():
                return True
        return False

    def _wait_alive(self):
        deadline = runtime.ticks_add(runtime.ticks_ms(), self.reset_wait_ms)
        while runtime.ticks_diff(deadline, runtime.ticks_ms()) > 0:
            if self.resync(1):
                self.rebooted = True  # after a reset the driver must re-initialise
                self.restarted_ms = runtime.ticks_ms()
                return True
        return False

    def _note(self, text):
        if self._log:
            self._log(text)

    def close(self):
        self._stream.close()


def _code(result):
    colon = result.find(b":")
    digits = result[colon + 1 :].strip()
    try:
        return int(digits)
    except ValueError:
        return -1
