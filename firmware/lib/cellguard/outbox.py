# Store and forward (docs/protocol.md section 8): every message is written to littlefs before it is
# first sent, sealed under a reserved sequence number on its first send (the sealed datagram then
# replaces the plaintext, so retransmissions are byte-identical), resent with exponential backoff
# until a downlink ACK covers it, and survives reboots and power cuts. Bounded, with a daily byte
# budget. Downlink datagrams are handled here too: ACKs, TIME, and commands, which are passed to the
# application's callback and confirmed with a DACK.
from cellguard import atomic, downlink, message, runtime, seqstore, wire

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_PLAIN = const(0x50)  # b"P": flags byte + plaintext payload, not yet sealed
_SEALED = const(0x53)  # b"S": the sealed datagram
_CONTROL = const(1)

CONFIG_INTERVAL = const(1)
CONFIG_BUDGET = const(2)
CONFIG_MODE = const(3)
CONFIG_RETRY_CEILING = const(4)
MAX_INTERVAL_S = const(518400)  # 6 days: ticks_add() takes at most half the 2^30 ms ticks period
# The largest payload: sealed with the largest header (4-byte key id and sequence) and tag (a 32-byte
# HMAC, whatever mode a CONFIG switches to later), it still fits the entry buffer after its marker
# byte, so every datagram is at most wire.MAX_DATAGRAM (the hub's limit, protocol.md section 1).
MAX_PAYLOAD = const(512 - 1 - (1 + 4 + 4 + 32))
SEQ_WARN = 0xFFFFFFFF - (1 << 20)  # protocol.md section 9: ask for a new key well before the end


class OutboxError(Exception):
    pass


class OutboxFull(OutboxError):
    """Only control entries (HELLO, TAMPER) left and no room: the new reading is refused."""


class LinkDown(OutboxError):
    """The carrier failed a send or a receive (poll() raises it; .cause is the socket's exception).
    Nothing is lost: the datagram stays queued, its budget bytes are given back, and the caller
    (the application) brings the data session back before polling again."""

    def __init__(self, cause):
        super().__init__("link down: %s" % (cause,))
        self.cause = cause


class _Entry:
    def __init__(self, eid, control, seq, size):
        self.id = eid
        self.control = control
        self.seq = seq  # None until sealed
        self.size = size
        self.due = 0  # ticks_ms of the next attempt (0: now)
        self.backoff = 0


def _log(msg):
    try:
        from cellguard import status

        status.log(msg)
    except Exception:  # status (board helper) is optional: never let logging stop delivery
        pass


class Outbox:
    """sock: a datagram socket (docs/modem.md, "Datagram sockets"); channel: the device's message.Channel."""

    def __init__(
        self,
        channel,
        sock,
        host,
        port,
        folder=None,
        capacity=64,
        budget=4096,
        base_ms=2000,
        ceiling_ms=600000,
        max_inflight=8,
        span=32,
        on_command=None,
    ):
        self.channel = channel
        self.sock = sock
        self.host = host
        self.port = port
        self.folder = folder or runtime.path_join(runtime.fs_root(), "outbox")
        self.capacity = capacity
        self.budget = budget
        self.base_ms = base_ms
        self.ceiling_ms = ceiling_ms
        self.max_inflight = max_inflight
        self.span = span
        self.on_command = on_command
        self.time_offset = 0  # hub time - local time, from TIME records
        self.interval_s = None  # report interval set by the hub (CONFIG 1), None: the app's own
        self.stats = {"sent": 0, "resent": 0, "acked": 0, "evicted": 0, "rejected_downlink": 0, "budget_stops": 0}
        self._buf = bytearray(wire.MAX_DATAGRAM)
        self._events_sent = []
        self._link_error = None  # the carrier's failure in this round, raised by poll()
        atomic.ensure_dir(self.folder)
        self._entries = []
        self._load()
        if channel.reseal_pending:  # a power cut in the middle of an epoch move
            self._reseal()
        self._budget_day, self._budget_used = self._load_budget()
        self._load_config()

    # ---- persistence ---------------------------------------------------------------------------
    def _path(self, eid):
        return self.folder + "/%08x" % eid

    def _load(self):
        ids = []
        for name in atomic.listdir(self.folder):
            if len(name) == 8:
                try:
                    ids.append(int(name, 16))
                except ValueError:
                    pass
            elif name.endswith(".tmp"):  # a write the power cut interrupted: never renamed, never used
                atomic.remove(self.folder + "/" + name)
        ids.sort()
        for eid in ids:
            try:
                data = atomic.read_bytes(self._path(eid))
                if data[0] == _SEALED:
                    _f, _kid, seq, _h = wire.parse_header(memoryview(data)[1:])
                    e = _Entry(eid, bool(_f & wire.FLAG_CONTROL), seq, len(data) - 1)
                    # Sealed before a CONFIG changed the mode: the hub acks it in that mode.
                    self.channel.accept_mode(message.ENCRYPT if _f & wire.FLAG_ENCRYPT else message.SIGN)
                elif data[0] == _PLAIN:
                    e = _Entry(eid, bool(data[1] & _CONTROL), None, len(data) - 2)
                else:
                    raise ValueError("bad entry")
            except (OSError, ValueError, IndexError, wire.Malformed):
                _log("outbox: dropped unreadable entry %d" % eid)
                atomic.remove(self._path(eid))
                continue
            self._entries.append(e)
        self._next_id = (ids[-1] + 1) if ids else 0

    def _budget_path(self):
        return self.folder + "/budget"

    def _load_budget(self):
        # "day used [time offset]": the hub's clock offset is kept with the budget, so a reboot
        # neither forgets what today has cost nor whose clock "today" is on.
        try:
            fields = atomic.read_bytes(self._budget_path()).split()
            if len(fields) > 2:
                self.time_offset = int(fields[2])
            return int(fields[0]), int(fields[1])
        except (OSError, ValueError, IndexError):
            return self._today(), 0

    def _save_budget(self):
        atomic.write_atomic(
            self._budget_path(), b"%d %d %d" % (self._budget_day, self._budget_used, self.time_offset)
        )

    def _set_time(self, unix):
        offset = unix - runtime.time_s()
        if abs(offset - self.time_offset) > 2:  # a real correction, not the link's latency
            self.time_offset = offset
            self._save_budget()

    def _today(self):
        return (runtime.time_s() + self.time_offset) // 86400

    # ---- the application's side ------------------------------------------------------------------
    def enqueue(self, payload, control=False):
        """Persist a message; it is sent by poll() until acknowledged. Returns its entry id."""
        if len(payload) > MAX_PAYLOAD:
            raise ValueError("payload too large")
        if len(self._entries) >= self.capacity:
            self._evict(control)
        eid = self._next_id
        atomic.write_atomic(self._path(eid), bytes((_PLAIN, _CONTROL if control else 0)) + bytes(payload))
        self._next_id = eid + 1
        self._entries.append(_Entry(eid, control, None, len(payload)))
        return eid

    def hello(self, reason, version):
        """Queue a HELLO (boot reason code, firmware version string): the hub answers with TIME."""
        return self.enqueue(bytes((wire.CTRL_HELLO, reason)) + version.encode(), control=True)

    def event(self, code, detail=b""):
        """Queue a TAMPER/event message (protocol.md section 5), e.g. the SIM lock's code 1."""
        return self.enqueue(bytes((wire.CTRL_TAMPER, code)) + bytes(detail), control=True)

    def _evict(self, control):
        # Full: the oldest reading goes (counted, logged); control entries are kept.
        for e in self._entries:
            if not e.control:
                self._drop(e)
                self.stats["evicted"] += 1
                _log("outbox full: evicted entry %d" % e.id)
                return
        raise OutboxFull("outbox full of control messages")

    def _drop(self, e):
        atomic.remove(self._path(e.id))
        self._entries.remove(e)

    def pending(self):
        return len(self._entries)

    # ---- sending ------------------------------------------------------------------------------------
    def _budget_allows(self, n):
        today = self._today()
        if today > self._budget_day:
            # Only a day that moves forward opens a new budget: a clock that a reboot or a TIME
            # set back (or a local clock without the hub's offset) must not grant a fresh one.
            self._budget_day, self._budget_used = today, 0
        if self._budget_used + n > self.budget:
            return False
        return True

    def _spend(self, n):
        self._budget_used = max(0, self._budget_used + n)
        self._save_budget()

    def _transmit(self, data):
        if not self._budget_allows(len(data)):
            self.stats["budget_stops"] += 1
            return False
        # Charged before the datagram leaves: a power cut after the send cannot give it back.
        self._spend(len(data))
        try:
            self.sock.sendto(data, self.host, self.port)
        except Exception as e:  # the carrier failed (modem error, no network, the SIM lock)
            self._spend(-len(data))  # it never left: the budget pays for what goes on the air
            self._link_failed("send", e)
            return False
        return True

    def _link_failed(self, what, e):
        _log("outbox: %s failed: %s" % (what, e))
        self._link_error = e

    def _raise_link_error(self):
        e = self._link_error
        if e is not None:
            self._link_error = None
            raise LinkDown(e)

    def _seal(self, e):
        data = atomic.read_bytes(self._path(e.id))
        buf = self._buf
        buf[0] = _SEALED
        n = self.channel.seal_into(memoryview(data)[2:], memoryview(buf)[1:], bool(data[1] & _CONTROL))
        atomic.write_atomic(self._path(e.id), memoryview(buf)[: 1 + n])  # persisted before it is sent
        e.seq = self.channel.last_seq
        e.size = n
        if e.seq >= SEQ_WARN:
            self._event_once(wire.EVENT_SEQ_NEAR_EXHAUSTION)
        return memoryview(buf)[1 : 1 + n]

    def _inflight(self):
        return [e for e in self._entries if e.seq is not None]

    def send_due(self):
        """Send what is due; stops at the first failed send (poll() then raises LinkDown)."""
        self._link_error = None  # a failure of an earlier round or socket is not this one's
        now = runtime.ticks_ms()
        inflight = self._inflight()
        oldest = min([e.seq for e in inflight]) if inflight else None
        for e in list(self._entries):
            if e.due and runtime.ticks_diff(e.due, now) > 0:
                continue
            if e.seq is None:
                if len(inflight) >= self.max_inflight:
                    continue
                if oldest is not None and self.channel.counter.peek() - oldest >= self.span:
                    continue  # keep the oldest in-flight datagram inside the hub's window
                try:
                    data = self._seal(e)
                except seqstore.SequenceError as err:
                    # No safe sequence number (exhausted, or its file lost): never guess one. What
                    # is already sealed keeps being delivered; the rest waits for a new key.
                    self.stats["seal_refused"] = self.stats.get("seal_refused", 0) + 1
                    _log("outbox: cannot seal: %s" % err)
                    continue
                inflight.append(e)
                if oldest is None:
                    oldest = e.seq
                self.stats["sent"] += 1
            else:
                data = atomic.read_bytes(self._path(e.id))[1:]
                self.stats["resent"] += 1
            if not self._transmit(data):
                return
            e.backoff = self.base_ms if not e.backoff else min(e.backoff * 2, self.ceiling_ms)
            jitter = (runtime.random_bytes(1)[0] - 128) * e.backoff // 512  # +-25 %
            e.due = runtime.ticks_add(now, e.backoff + jitter) or 1

    # ---- receiving ----------------------------------------------------------------------------------
    def poll(self, timeout_ms=0):
        """Send what is due, then handle downlinks for up to timeout_ms. Returns pending().
        LinkDown if the carrier failed: the caller re-establishes it (nothing queued is lost)."""
        self.send_due()
        self._raise_link_error()
        deadline = runtime.ticks_add(runtime.ticks_ms(), timeout_ms)
        while True:
            left = runtime.ticks_diff(deadline, runtime.ticks_ms())
            try:
                got = self.sock.recvfrom(max(0, left))
            except Exception as e:  # the carrier failed (modem reset, no network, the SIM lock)
                self._link_failed("receive", e)
                break
            if got is None:
                break
            self.handle_downlink(got[0])
            self._raise_link_error()  # a DACK that could not leave
            if not self._entries:
                break
        self._raise_link_error()
        return len(self._entries)

    def handle_downlink(self, data):
        self._handle_downlink(data)
        if self.channel.reseal_pending:
            # The key epoch moved (the forgery limit, or the hub's EPOCH record): what is in flight
            # is sealed again in the new epoch, same sequence numbers, and sent at once, which tells
            # the hub (protocol.md section 9).
            self._reseal()

    def _reseal(self):
        buf = self._buf
        for e in list(self._entries):
            if e.seq is None:
                continue
            data = atomic.read_bytes(self._path(e.id))
            n = self.channel.reseal_into(memoryview(data)[1:], memoryview(buf)[1:])
            if not n:
                _log("outbox: entry %d verifies in no epoch, dropped" % e.id)
                self._drop(e)
                continue
            buf[0] = _SEALED
            atomic.write_atomic(self._path(e.id), memoryview(buf)[: 1 + n])
            e.size = n
            e.due = 0
            e.backoff = 0
        self.channel.reseal_done()
        _log("outbox: key epoch %d" % self.channel.epoch)
        self._event_once(wire.EVENT_FORGERY_LIMIT)

    def _handle_downlink(self, data):
        try:
            flags, seq, payload = self.channel.open(data)
        except message.Replayed as e:
            # The hub resends a command datagram until confirmed: answer again, do not execute again.
            if e.duplicate and e.payload is not None and self._has_commands(e.payload):
                self._dack(e.seq)
            self.stats["rejected_downlink"] += 1
            return
        except (message.MessageError, wire.Malformed) as e:
            self.stats["rejected_downlink"] += 1
            _log("downlink rejected: %s" % e)
            return
        try:
            records = downlink.parse(payload)
        except downlink.BadRecord as e:
            _log("downlink: %s" % e)
            return
        commands = False
        reboot = None
        for rec in records:
            kind = rec[0]
            if kind == "ack":
                self._acked(downlink.acked(rec[1], rec[2]))
            elif kind == "time":
                self._set_time(rec[1])
            elif kind == "epoch":
                self.channel.move_epoch()  # the hub's limit: it asks once per answer until we move
            elif kind == "unknown":
                _log("unknown downlink record %d" % rec[1])
            elif kind == "chunk":
                if self.on_command is not None:
                    self.on_command(rec)
            else:
                commands = True
                if kind == "reboot":
                    reboot = rec  # run last: a reset would lose the window and the DACK below
                    continue
                if kind == "config":
                    self._config(rec[1], rec[2])
                if self.on_command is not None:
                    self.on_command(rec)
        if commands:
            self.channel.persist_window()  # executed: never again, even after a reboot
            self._dack(seq)
        if reboot is not None and self.on_command is not None:
            # Only now: the window is on flash and the DACK has left, so the hub marks the command
            # done and, should the DACK be lost, its resend is a replay answered with another DACK.
            self.on_command(reboot)

    def _has_commands(self, payload):
        try:
            return any(r[0] in downlink.COMMANDS for r in downlink.parse(payload))
        except downlink.BadRecord:
            return False

    def _dack(self, seq):
        n = wire.uint_len(seq)
        body = bytearray(1 + n)
        body[0] = wire.CTRL_DACK
        wire.put_uint(body, 1, seq, n)
        self.send_direct(body)

    def send_direct(self, body):
        """Seal a control payload and send it once, now, outside the store-and-forward queue (DACK,
        CHUNK REQ: the hub's answer is what confirms them). The daily budget still applies."""
        try:
            m = self.channel.seal_into(body, self._buf, True)
        except Exception as e:
            _log("direct send: %s" % e)
            return False
        return self._transmit(memoryview(self._buf)[:m])

    def _event_once(self, code):
        # A TAMPER/event message (protocol.md section 5), queued once per boot per code.
        if code in self._events_sent:
            return
        self._events_sent.append(code)
        _log("event %d" % code)
        try:
            self.enqueue(bytes((wire.CTRL_TAMPER, code)), control=True)
        except OutboxError:
            pass

    def _config(self, key, value, persist=True):
        if key == CONFIG_INTERVAL:
            if not 1 <= value <= MAX_INTERVAL_S:
                _log("config: report interval %d s out of range, ignored" % value)
                return
            self.interval_s = value  # the application reads it (App.interval_ms)
        elif key == CONFIG_MODE:
            self.channel.set_mode(message.ENCRYPT if value else message.SIGN)
        elif key == CONFIG_BUDGET:
            self.budget = value
        elif key == CONFIG_RETRY_CEILING:
            self.ceiling_ms = value * 1000
        else:
            _log("config: unknown key %d ignored" % key)
            return
        if persist:
            # The hub's settings outlive a reboot (a trial boot, a power cut): kept as "key value"
            # lines, the last word for each key wins.
            self._settings[key] = value
            atomic.write_atomic(
                self._config_path(), "".join("%d %d\n" % kv for kv in self._settings.items()).encode()
            )

    def _config_path(self):
        return self.folder + "/config"

    def _load_config(self):
        self._settings = {}
        try:
            text = atomic.read_bytes(self._config_path()).decode()
        except (OSError, ValueError):
            return
        for line in text.split("\n"):
            try:
                key, value = line.split()
                self._config(int(key), int(value), persist=False)
                self._settings[int(key)] = int(value)
            except ValueError:
                continue  # a blank or damaged line: that setting keeps its default

    def _acked(self, seqs):
        for e in list(self._entries):
            if e.seq is not None and e.seq in seqs:
                self._drop(e)
                self.stats["acked"] += 1
