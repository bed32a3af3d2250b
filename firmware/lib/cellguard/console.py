# The technician's console on the board's serial port (docs/field-guide.md).
#
# Read-only commands need no authentication: `status`, `status --json`, `version`, `log`, `help`.
# Service actions (`open-repl`, `reprovision`, `wipe`) need a challenge-response bound to this
# device: `service challenge` prints the device id and a fresh random nonce; the host answers with
# HMAC-SHA-256 over (device id, nonce, action) keyed with this device's service key, which the host
# derives from a service master secret that never leaves the host (cellguard status --service). A
# nonce is single-use and expires; every refused attempt is logged, kept in the security record and
# makes the next one wait longer (cellguard/service.py). Garbled input gets a clear error and the
# console keeps running; in production nothing typed reaches the Python REPL.
import json

from cellguard import VERSION, consolelock, runtime, security, status
from cellguard.service import (
    SERVICE_ACTIONS,
    Backoff,
    ConsoleError,
    ServiceAuth,
    hmac_sha256,
    service_message,
)

__all__ = ("Console", "ConsoleError", "ServiceAuth", "hmac_sha256", "main", "serve", "service", "service_message")

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


PROMPT = "cellguard> "
_MAX_LINE = const(160)
_BS = (8, 127)
# The console's share of the main loop, so a busy port never stops the unit (docs/field-guide.md,
# "A busy console"): per turn (between two application steps, or one AT idle callback) at most
# _LINES lines answered and _READ_MAX bytes read; lines past that are dropped, counted, and the
# rest of a flood is read and dropped cheaply (_DISCARD_MAX more bytes, no echo); modem facts
# refreshed at most every _REFRESH_MS; output queued and sent per turn: consoleport.Output.
_LINES = const(8)
_READ_MAX = const(256)
_DISCARD_MAX = const(1024)
_REFRESH_MS = const(2000)


# ---- rendering (cellguard/statuspage.py, loaded on first use) -----------------------------------
def render_status(snap):
    """The `status` page a technician reads (docs/field-guide.md explains every line)."""
    from cellguard import statuspage

    return statuspage.render(snap)


# ---- the console --------------------------------------------------------------------------------
class Console:
    """Feed it bytes from the serial port; it writes answers through `write(str)`.

    feed() returns None to go on, or "repl" when an authenticated service action (or, on an
    unlocked development unit, `repl`) hands the port back to the Python REPL.
    """

    def __init__(self, write, locked, auth=None, wipe=None, refresh=None):
        self.write = write
        self._refresh = refresh  # called before `status` shows anything (fresh modem facts)
        self.locked = locked
        self.auth = auth if auth is not None else ServiceAuth(None)
        self._wipe = wipe or _wipe_device
        self._line = bytearray()
        self._garbled = 0
        self._too_long = False
        self._last = 0
        self._budget = None  # lines still answered this turn: no bound until begin()
        self.discarding = False  # this turn's budget is spent: lines are dropped and counted
        self._dropped = 0
        self._refreshed = None
        self._raw = None  # mpremote's raw-REPL handshake on a locked console (cgboot.rawrefusal)
        status.set("console", "mode", "production (locked)" if locked else "development (unlocked)")
        # One id: the service record is made for the provisioned identity (tools/flash.py), and
        # before provisioning its id names the unit. A unit where they differ says so.
        shown = status.get("device", "id")
        if self.auth.device_id and shown is None:
            status.set("device", "id", self.auth.device_id)
        elif self.auth.device_id and shown != self.auth.device_id:
            status.log("console: the service record is for device %s, not %s: flash the unit again"
                       % (self.auth.device_id, shown), error=True)

    def prompt(self):
        self.write(PROMPT)

    def begin(self, lines=_LINES):
        """A new turn: at most `lines` lines answered until the next one (serve() calls it)."""
        self._budget = lines
        self.discarding = False

    def _admit(self):
        # One more line answered this turn? No: it is dropped, and so is the rest of the turn.
        if self._budget is None:
            return True
        if not self.discarding and self._budget > 0:
            self._budget -= 1
            return True
        self.discarding = True
        self._reset_line()
        self._dropped += 1
        return False

    def _reset_line(self):
        self._line = bytearray()
        self._garbled = 0
        self._too_long = False

    def feed(self, b):
        if self._raw is not None:
            if self._raw.feed(b):
                self._raw = None
                self.prompt()
            return None
        last, self._last = self._last, b
        if self.discarding:  # only counted: no echo, nothing kept
            if b == 13 or (b == 10 and last != 13) or (b < 32 and b not in _BS and b != 10):
                self._dropped += 1
            return None
        if b in (13, 10):
            if b == 10 and last == 13:
                return None  # the \n of a \r\n
            if (self._line or self._garbled or self._too_long) and not self._admit():
                return None  # an empty line costs a prompt only: never refused
            self.write("\n")
            self._busy_note()
            line, garbled, too_long = bytes(self._line), self._garbled, self._too_long
            self._reset_line()
            if too_long:
                self._error("line longer than %d characters - ignored" % _MAX_LINE)
                self.prompt()
                return None
            if garbled:
                self._error("garbled input (%d byte(s) that are not text) - line ignored" % garbled)
                self.prompt()
                return None
            result = self.command(line.decode())
            if result is None:
                self.prompt()
            return result
        if b in _BS:
            if self._line:
                self._line = self._line[:-1]
                self.write("\b \b")
            return None
        if 32 <= b < 127:
            if len(self._line) >= _MAX_LINE:
                self._too_long = True
                return None
            self._line.append(b)
            self.write(chr(b))
            return None
        if b == 1 and self.locked:  # mpremote: answer so that it fails at once, and says why
            from cgboot.rawrefusal import RawRefusal

            self._raw = RawRefusal(self.write)
            self._raw.start()
            return None
        if b < 32:
            # Ctrl-A/B/C/D/E are how a host reaches the REPL; here they are only bytes.
            if not self._admit():
                return None
            self.write("\n")
            self._busy_note()
            self._error("control character 0x%02x ignored%s" % (b, " (console locked)" if self.locked else ""))
            self._reset_line()
            self.prompt()
            return None
        self._garbled += 1
        return None

    def _error(self, msg):
        self.write("error: %s\n" % msg)

    def _busy_note(self):
        if self._dropped:
            self._error("console busy: %d line(s) dropped unanswered (at most %d at a time)"
                        % (self._dropped, _LINES))
            self._dropped = 0

    def command(self, line):
        words = line.split()
        if not words:
            return None
        cmd, args = words[0], words[1:]
        try:
            if cmd == "help":
                self.write(_HELP)
            elif cmd == "status":
                if self._refresh is not None and args in ([], ["--json"]):
                    # Fresh modem facts, but at most every _REFRESH_MS: each refresh asks the modem.
                    now = runtime.ticks_ms()
                    if self._refreshed is None or runtime.ticks_diff(now, self._refreshed) >= _REFRESH_MS:
                        self._refreshed = now
                        self._refresh()
                if args == ["--json"]:
                    self.write(json.dumps(snapshot()) + "\n")
                elif not args:
                    self.write(render_status(snapshot()) + "\n")
                else:
                    raise ConsoleError("usage: status [--json]")
            elif cmd == "version":
                from cellguard.statuspage import field, running_version

                snap = snapshot()
                self.write("cellguard %s  slot %s  %s  board %s\n" % (running_version(snap), field(snap, "boot", "slot"),
                                                                      field(snap, "device", "runtime"),
                                                                      field(snap, "device", "board")))
            elif cmd == "log":
                from cellguard.statuspage import when

                self.write("security record (kept on the unit):\n")
                for t, e, n, _ in security.load():
                    self.write("  %s  %s%s\n" % (when(t), e, " (x%d)" % n if n > 1 else ""))
                self.write("recent events:\n")
                for t, e in status.events():
                    self.write("%s  %s\n" % (when(t), e))
            elif cmd == "service":
                return self._service(args)
            elif cmd == "repl" and not self.locked:
                return "repl"
            else:
                raise ConsoleError("unknown command %r; type `help`" % cmd[:20])
        except ConsoleError as e:
            self._error(str(e))
        return None

    def _service(self, args):
        auth = self.auth
        if args == ["challenge"]:
            nonce = auth.challenge()
            status.log("service challenge issued")
            self.write("challenge %s %s\n" % (auth.device_id, nonce))
            return None
        if not args or args[0] not in SERVICE_ACTIONS:
            raise ConsoleError("usage: service challenge | service <%s> <response>" % "|".join(SERVICE_ACTIONS))
        action = args[0]
        try:
            if len(args) != 2:
                auth.guard()
                auth.forget()  # a bare attempt uses up the challenge too
                raise ConsoleError("not authenticated")
            auth.check(action, args[1])
        except Backoff as e:  # refused before anything is checked: no flash write, not counted
            raise ConsoleError("service %s refused: %s" % (action, e))
        except ConsoleError as e:
            _security("service %s refused: %s" % (action, e), error=True)
            auth.failed()
            if len(args) != 2:
                e = "it needs the response to a fresh challenge (cellguard status --service %s)" % action
            raise ConsoleError("service %s refused: %s" % (action, e))
        auth.succeeded()
        _security("service %s authorised" % action)
        if action == "wipe":
            self._wipe()
            _security("device wiped by service action")
            self.write("service wipe done: keys and queued data erased; the unit is unprovisioned\n")
            return None
        if action == "reprovision":
            from cellguard.service import mark_reprovision

            mark_reprovision()
            self.write("service reprovision: REPL open for cellguard provision --force\n")
        else:
            self.write("service open-repl: REPL open until the next reset (soft or hard)\n")
        return "repl"


def _security(text, error=False):
    # The console's `log` (recent, in RAM) and the security record (on flash, noise cannot evict).
    status.log(text, error=error)
    if not security.record(text, refusal=error):
        status.log("security record not written (flash)", error=True)


_HELP = """commands:
  status            the device's state (status --json for scripts)
  version           firmware version and slot
  log               recent events and errors
  service challenge start a service action (cellguard status --service ...)
"""


def _wipe_device():
    from cellguard.service import wipe_device

    wipe_device()


def snapshot():
    snap = status.snapshot()
    snap["security"] = security.load()
    snap.setdefault("firmware", {})["version"] = VERSION
    from cellguard import statuspage

    if statuspage.certification_unit(snap):
        snap["warning"] = statuspage.UNLOCKED_BANNER  # status --json: scripts and the hub's tools see it too
    return snap


# ---- running it on the board's stdin/stdout (the port itself: cellguard/consoleport.py) ----------
def _stdio(poll_ms=None):
    from cellguard import consoleport

    return consoleport.stdio(poll_ms)


def _turn(console, read_byte, first=True):
    # What waits on the port, fed to the console: at most _READ_MAX bytes and _LINES lines answered;
    # past those, up to _DISCARD_MAX more bytes are read and only counted (a flood drains fast and
    # costs little). The first read waits as read_byte does (unless first is False); the rest take
    # what is there. Returns what ends serve() ("repl"), -1 at the end of input, or None.
    console.begin()
    for n in range(_READ_MAX + _DISCARD_MAX):
        if n >= _READ_MAX and not console.discarding:
            return None
        b = read_byte() if n == 0 and first else read_byte(0)
        if b is None:
            return None
        if b < 0:
            return -1
        result = console.feed(b)
        if result:
            return result
    return None


def serve(console, read_byte, idle=None, out=None):
    """Run the console until it hands over to the REPL ("repl") or its input ends ("eof").

    read_byte(wait_ms) returns a byte, -1 at the end of input, or None when nothing is waiting.
    Each turn the console gets a bounded share (one _turn, its output sent as far as the port
    takes it), then idle() runs (the application's step) whatever arrives: the console and the
    application share one loop, and a flood on the port cannot stop the application."""
    console.prompt()
    del _serving[:]
    while True:
        try:
            del _serving[:]  # service() answers only while idle() waits, never inside a turn
            result = _turn(console, read_byte)
            if result == -1:
                if console.locked:  # a locked console never ends; wait for the port to come back
                    runtime.sleep_ms(100)
                    continue
                result = "eof"
            if result:
                if out is not None:
                    out.flush(1000)  # the last answer (the REPL hand-over), if anyone reads
                return result
            if out is not None:
                out.flush()
            _serving[:] = [console, read_byte, out]
            if idle is not None:
                idle()
            if len(_serving) > 3:  # service() saw the line that ends the console
                return _serving.pop()
        except KeyboardInterrupt:
            if not console.locked:
                raise
            console.write("\nerror: interrupt ignored (console locked)\n")  # kbd_intr(-1) failed?
            console.prompt()
        except Exception as e:  # the console must outlive any bug in a status provider
            status.log("console: %s" % e, error=True)
            console.write("\nerror: %s\n" % e)
            console.prompt()


# The console serve() is running, for service(): [console, read_byte, out(, a result for serve)].
_serving = []


def service():
    """Answer what has arrived on the console port, from inside a long wait elsewhere (the AT
    engine's idle callback while an attach waits), so the console never goes silent: one turn,
    within the same bounds as serve()'s. A result that ends serve() ("repl") is kept for serve()."""
    if len(_serving) != 3:
        return
    console, read_byte, out = _serving
    result = _turn(console, read_byte, first=False)
    if result and result != -1:
        _serving.append(result)
    if out is not None:
        out.flush()


def main(refresh=None, idle=None, idle_poll_ms=20):
    """main.py's entry: run the console on stdin/stdout, never returning while locked. With idle,
    the console polls its port every idle_poll_ms and runs idle() in between."""
    locked = consolelock.apply()
    from cellguard import consoleport

    read_byte, write = consoleport.stdio(idle_poll_ms if idle is not None else None)
    out = consoleport.Output(write)
    console = Console(out.write, locked, ServiceAuth.load(), refresh=refresh)
    while True:
        result = serve(console, read_byte, idle, out)
        if result == "repl" or not locked:
            consolelock.set_interrupt(True)
            return result
