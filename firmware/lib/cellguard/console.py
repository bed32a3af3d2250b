# The technician's console on the board's serial port (docs/field-guide.md).
#
# Read-only commands need no authentication: `status`, `status --json`, `version`, `log`, `help`.
# Service actions (`open-repl`, `reprovision`, `wipe`) need a challenge-response bound to this
# device: `service challenge` prints the device id and a fresh random nonce; the host answers with
# HMAC-SHA-256 over (device id, nonce, action) keyed with this device's service key, which the host
# derives from a service master secret that never leaves the host (cellguard status --service). A
# nonce is single-use and expires; every refused attempt is logged. Garbled input gets a clear error
# and the console keeps running; in production nothing typed reaches the Python REPL.
import json

from cellguard import VERSION, consolelock, runtime, status

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


PROMPT = "cellguard> "
SERVICE_FILE = "keys/service.json"
SERVICE_CONTEXT = b"cellguard-service-v1"
SERVICE_ACTIONS = ("open-repl", "reprovision", "wipe")
_NONCE_TTL_MS = const(120000)
_MAX_LINE = const(160)
_BS = (8, 127)


class ConsoleError(Exception):
    pass


# ---- HMAC-SHA-256 and a constant-time compare: the messaging layer's (cellguard.crypto) when it is
# installed; this small fallback until then (same signatures), so the console never depends on it.
try:
    from cellguard.crypto import ct_equal, hmac_sha256
except ImportError:

    def hmac_sha256(key, msg):
        if len(key) > 64:
            key = runtime.sha256(key).digest()
        key = key + b"\x00" * (64 - len(key))
        inner = runtime.sha256(bytes(b ^ 0x36 for b in key))
        inner.update(msg)
        outer = runtime.sha256(bytes(b ^ 0x5C for b in key))
        outer.update(inner.digest())
        return outer.digest()

    def ct_equal(a, b):
        if len(a) != len(b):
            return False
        diff = 0
        for i in range(len(a)):
            diff |= a[i] ^ b[i]
        return diff == 0


def service_message(device_id, nonce_hex, action):
    return b"|".join((SERVICE_CONTEXT, device_id.encode(), nonce_hex.encode(), action.encode()))


class ServiceAuth:
    """The device side of the service challenge-response."""

    def __init__(self, record=None):
        # record: {"device_id": str, "key_id": str, "key": hex} from keys/service.json (never shown).
        self._record = record
        self._nonce = None
        self._issued = 0

    @classmethod
    def load(cls):
        try:
            with open(runtime.path_join(runtime.fs_root(), SERVICE_FILE)) as f:
                rec = json.load(f)
            bytes.fromhex(rec["key"])
            return cls({"device_id": str(rec["device_id"]), "key_id": str(rec.get("key_id", "")),
                        "key": rec["key"]})
        except (OSError, ValueError, KeyError, TypeError):
            return cls(None)

    @property
    def device_id(self):
        return self._record["device_id"] if self._record else None

    @property
    def key_id(self):
        return self._record["key_id"] if self._record else None

    def challenge(self):
        if self._record is None:
            raise ConsoleError("no service key on this device: service actions are unavailable")
        self._nonce = runtime.random_bytes(16).hex()
        self._issued = runtime.ticks_ms()
        return self._nonce

    def check(self, action, response_hex):
        """True if response_hex answers the current challenge for action; the nonce is used up."""
        nonce, self._nonce = self._nonce, None
        if self._record is None:
            raise ConsoleError("no service key on this device")
        if nonce is None:
            raise ConsoleError("no challenge issued (run `service challenge` first)")
        if runtime.ticks_diff(runtime.ticks_ms(), self._issued) > _NONCE_TTL_MS:
            raise ConsoleError("the challenge expired; ask for a new one")
        try:
            response = bytes.fromhex(response_hex)
        except ValueError:
            raise ConsoleError("the response is not hex")
        key = bytes.fromhex(self._record["key"])
        expected = hmac_sha256(key, service_message(self._record["device_id"], nonce, action))
        if not ct_equal(response, expected):
            raise ConsoleError("wrong response")
        return True


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
        self._raw = None  # mpremote's raw-REPL handshake on a locked console (cgboot.rawrefusal)
        status.set("console", "mode", "production (locked)" if locked else "development (unlocked)")
        if self.auth.device_id and status.get("device", "id") is None:
            # Before provisioning the service record's id names the unit; after it, the
            # provisioned identity (set by main.py from cellguard.keys) does.
            status.set("device", "id", self.auth.device_id)

    def prompt(self):
        self.write(PROMPT)

    def feed(self, b):
        if self._raw is not None:
            if self._raw.feed(b):
                self._raw = None
                self.prompt()
            return None
        last, self._last = self._last, b
        if b in (13, 10):
            if b == 10 and last == 13:
                return None  # the \n of a \r\n
            self.write("\n")
            line, garbled, too_long = bytes(self._line), self._garbled, self._too_long
            self._line = bytearray()
            self._garbled = 0
            self._too_long = False
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
            self.write("\n")
            self._error("control character 0x%02x ignored%s" % (b, " (console locked)" if self.locked else ""))
            self._line = bytearray()
            self._garbled = 0
            self._too_long = False
            self.prompt()
            return None
        self._garbled += 1
        return None

    def _error(self, msg):
        self.write("error: %s\n" % msg)

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
                    self._refresh()
                if args == ["--json"]:
                    self.write(json.dumps(snapshot()) + "\n")
                elif not args:
                    self.write(render_status(snapshot()) + "\n")
                else:
                    raise ConsoleError("usage: status [--json]")
            elif cmd == "version":
                from cellguard.statuspage import field

                snap = snapshot()
                self.write("cellguard %s  slot %s  %s  board %s\n" % (
                    VERSION, field(snap, "boot", "slot"), field(snap, "device", "runtime"), field(snap, "device", "board")))
            elif cmd == "log":
                from cellguard.statuspage import when

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
        if args == ["challenge"]:
            nonce = self.auth.challenge()
            status.log("service challenge issued")
            self.write("challenge %s %s\n" % (self.auth.device_id, nonce))
            return None
        if not args or args[0] not in SERVICE_ACTIONS:
            raise ConsoleError("usage: service challenge | service <%s> <response>" % "|".join(SERVICE_ACTIONS))
        action = args[0]
        if len(args) != 2:
            status.log("service %s refused: not authenticated" % action, error=True)
            self.auth._nonce = None
            raise ConsoleError("service %s refused: it needs the response to a fresh challenge "
                               "(cellguard status --service %s)" % (action, action))
        try:
            self.auth.check(action, args[1])
        except ConsoleError as e:
            status.log("service %s refused: %s" % (action, e), error=True)
            raise ConsoleError("service %s refused: %s" % (action, e))
        status.log("service %s authorised" % action)
        if action == "wipe":
            self._wipe()
            self.write("service wipe done: keys and queued data erased; the unit is unprovisioned\n")
            return None
        if action == "reprovision":
            _mark_reprovision()
            self.write("service reprovision: REPL open for cellguard provision --force\n")
        else:
            self.write("service open-repl: REPL open until the next reset\n")
        return "repl"


_HELP = """commands:
  status            the device's state (status --json for scripts)
  version           firmware version and slot
  log               recent events and errors
  service challenge start a service action (cellguard status --service ...)
"""


def snapshot():
    snap = status.snapshot()
    snap.setdefault("firmware", {})["version"] = VERSION
    from cellguard import statuspage

    if statuspage.certification_unit(snap):
        snap["warning"] = statuspage.UNLOCKED_BANNER  # status --json: scripts and the hub's tools see it too
    return snap


def _remove_tree(path):
    import os

    try:
        entries = list(os.ilistdir(path))
    except (OSError, AttributeError):
        try:
            entries = [(n, 0x8000 if _is_file(path + "/" + n) else 0x4000) for n in os.listdir(path)]
        except OSError:
            return
    for ent in entries:
        p = path + "/" + ent[0]
        if ent[1] == 0x4000:
            _remove_tree(p)
            os.rmdir(p)
        else:
            os.remove(p)


def _is_file(p):
    import os

    return os.stat(p)[0] & 0x8000 != 0


def _wipe_device():
    # Decommission: the keys (through keys.wipe() when the messaging layer is installed) and queued
    # data go; the service record stays so the unit can still be serviced or re-provisioned.
    import os

    try:
        from cellguard import keys

        keys.wipe()
    except ImportError:
        pass
    root = runtime.fs_root()
    keys_dir = runtime.path_join(root, "keys")
    try:
        names = os.listdir(keys_dir)
    except OSError:
        names = []
    for n in names:
        if n != "service.json":
            p = keys_dir + "/" + n
            if _is_file(p):
                os.remove(p)
            else:
                _remove_tree(p)
                os.rmdir(p)
    _remove_tree(runtime.path_join(root, "outbox"))
    status.log("device wiped by service action")


def _mark_reprovision():
    import os

    try:
        os.mkdir(runtime.path_join(runtime.fs_root(), "state"))
    except OSError:
        pass
    with open(runtime.path_join(runtime.fs_root(), "state/reprovision"), "w") as f:
        f.write("1")


# ---- running it on the board's stdin/stdout -------------------------------------------------------
def _stdio(poll_ms=None):
    """(read_byte, write) on the console port. With poll_ms, read_byte waits at most that long and
    returns None when nothing came (so the caller can do other work); otherwise it blocks."""
    if runtime.NAME == runtime.CIRCUITPYTHON:
        return _cpy_stdio(poll_ms)
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

    read_byte = read_one
    if poll_ms is not None:
        import select

        poller = select.poll()
        poller.register(sys.stdin, select.POLLIN)

        def read_byte():
            return read_one() if poller.poll(poll_ms) else None

    def write(s):
        sys.stdout.write(s)

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

    def read_byte():
        if poll_ms is not None:
            deadline = runtime.ticks_add(runtime.ticks_ms(), poll_ms)
            while not supervisor.runtime.serial_bytes_available:
                if runtime.ticks_diff(deadline, runtime.ticks_ms()) <= 0:
                    return None
                runtime.sleep_ms(1)
        c = sys.stdin.read(1)
        return ord(c) if c else -1

    def write(s):
        sys.stdout.write(s)

    return read_byte, write


def _stream_stdio(port, poll_ms):
    # A runtime stream (write/readinto/wait_readable); it has no end of input, so never -1.
    one = bytearray(1)

    def read_byte():
        while not port.wait_readable(1000 if poll_ms is None else poll_ms):
            if poll_ms is not None:
                return None
        return one[0] if port.readinto(one) else None

    def write(s):
        port.write(s.encode())

    return read_byte, write


def serve(console, read_byte, idle=None):
    """Run the console until it hands over to the REPL ("repl") or its input ends ("eof").

    read_byte() returns a byte, -1 at the end of input, or None when nothing is waiting; then
    idle() runs (the application's step), so the console and the application share one loop.
    """
    console.prompt()
    del _serving[:]
    while True:
        if len(_serving) > 2:  # service() saw the line that ends the console
            return _serving.pop()
        _serving[:] = [console, read_byte]  # service() may answer while idle() waits...
        try:
            b = read_byte()
            if b is None:
                if idle is not None:
                    idle()
                continue
            if b < 0:
                if console.locked:  # a locked console never ends; wait for the port to come back
                    runtime.sleep_ms(100)
                    continue
                return "eof"
            del _serving[:]  # ...but not while the console handles a line itself
            result = console.feed(b)
            if result:
                return result
        except KeyboardInterrupt:
            if not console.locked:
                raise
            console.write("\nerror: interrupt ignored (console locked)\n")  # kbd_intr(-1) failed?
            console.prompt()
        except Exception as e:  # the console must outlive any bug in a status provider
            status.log("console: %s" % e, error=True)
            console.write("\nerror: %s\n" % e)
            console.prompt()


# The console serve() is running, for service(): [console, read_byte(, a result for serve)].
_serving = []


def service(max_bytes=64):
    """Answer what has arrived on the console port, from inside a long wait elsewhere (the AT
    engine's idle callback while an attach waits), so the console never goes silent. A result
    that ends serve() ("repl") is kept for serve() to return."""
    if len(_serving) != 2:
        return
    console, read_byte = _serving
    for _ in range(max_bytes):
        b = read_byte()
        if b is None or b < 0:
            return
        result = console.feed(b)
        if result:
            _serving.append(result)
            return


def main(refresh=None, idle=None, idle_poll_ms=20):
    """main.py's entry: run the console on stdin/stdout, never returning while locked. With idle,
    the console polls its port every idle_poll_ms and runs idle() in between."""
    locked = consolelock.apply()
    read_byte, write = _stdio(idle_poll_ms if idle is not None else None)
    console = Console(write, locked, ServiceAuth.load(), refresh=refresh)
    while True:
        result = serve(console, read_byte, idle)
        if result == "repl" or not locked:
            consolelock.set_interrupt(True)
            return result
