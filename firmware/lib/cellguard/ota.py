# Over-the-air update session: the application's glue between downlink records and the boot part.
#
# The hub offers an image (UPDATE OFFER: version, size, SHA-256 of the signed file, its largest
# chunk); the device asks for a window of chunks of that very image (CHUNK REQ names it by its
# image id, the first 4 bytes of the SHA-256) and the hub answers each chunk in a datagram of its
# own (IMAGE CHUNK). This module turns those records into calls on cgboot's UpdateWriter, which
# writes the inactive slot resumably, verifies the whole image and marks it for a trial boot; then
# it asks for a reboot. docs/messaging.md, "Over-the-air updates", is the policy:
#   - its own daily budget (both directions, IPv4/UDP headers included), never the readings';
#   - no parking: an unanswered request is asked again with a backoff up to 10 min, for ever, and
#     a reboot resumes from the flash;
#   - offers only move forward: a download or a verified image waiting for its reboot is replaced
#     only by a newer offer; a re-offer of the same image carries on where it stopped;
#   - a chunk that is not exactly what was asked for is rejected.
# It sends through the callbacks it is handed, so it runs with no network in tests.
import struct

from cellguard.wire import CTRL_CHUNK_REQ, CTRL_UPDATE_STATUS

try:  # the status registry (board layer); updates work without it
    from cellguard import status as _status
except ImportError:
    _status = None

# UPDATE STATUS codes (docs/protocol.md section 5): each ends the hub's re-offers of that image.
STATUS_INSTALLED = 1
STATUS_REFUSED = 2
STATUS_SUPERSEDED = 3

WIRE = 28  # IPv4 20 + UDP 8: what the carrier bills beside each datagram
# The most a chunk datagram adds to its chunk: flags 1, sequence 4, tag 32 (the longest HMAC tag),
# IMAGE CHUNK record header 11 (type, image id, offset, length).
CHUNK_OVERHEAD = 48
REQUEST_MAX = 1 + 4 + 4 + 32 + 12 + WIRE  # the largest CHUNK REQ on the air (checked before sending)
# Chunks asked for at once: about 4 KiB a request (4 of 976 bytes, 6 of 652 on an nRF91), at most 8
# (the modem buffers 16 datagrams). bench/bench_ota.py measured the patterns this was chosen from.
WINDOW_BYTES = 4096
WINDOW = 0  # a fixed number of chunks instead (tests, benchmarks); 0: by WINDOW_BYTES


def chunk_for(max_datagram):
    """The largest chunk whose datagram fits the modem's largest datagram (a multiple of 16)."""
    return (max_datagram - CHUNK_OVERHEAD) & ~15


def chunk_request_payload(offset, length, count, image_id):
    """CHUNK REQ: type, u32 offset, u16 chunk length, u8 count, 4-byte image id (big-endian)."""
    return struct.pack(">BIHB", CTRL_CHUNK_REQ, offset, length, count) + bytes(image_id)


def status_payload(code, image_id, reason=""):
    """UPDATE STATUS (through the outbox): type, u8 code, 4-byte image id, ASCII reason."""
    return bytes((CTRL_UPDATE_STATUS, code)) + bytes(image_id) + reason.encode()


def state_path(slots):
    return slots.state_dir + "/ota"


class OtaSession:
    """request(offset, length, count, image_id) -> bytes sent (0: it did not leave). reboot():
    restart into the trial boot. report(event, detail): the status log (optional).
    notify(code, image_id, reason): an UPDATE STATUS for the hub (optional). budget: a
    dailybudget.DailyBudget (None: unmetered). clock: ticks in ms (tests hand in their own)."""

    RETRY_MS = 5000  # nothing for this long: ask again (a request or its answers were lost)
    MAX_BACKOFF_MS = 600000  # the backoff doubles up to this, and the session never gives up
    COVERAGE_AFTER = 2  # unanswered requests before the status says "waiting for coverage"

    def __init__(self, writer, running_version, request, reboot, report=None, clock=None, notify=None,
                 budget=None, max_datagram=1024, window=None):
        from cellguard import runtime

        self.clock = clock or runtime.ticks_ms
        self._ticks_diff = runtime.ticks_diff
        self._random = runtime.random_bytes
        self.writer = writer
        self.running = tuple(running_version[:3])  # (major, minor, revision) of the booted image
        self.request = request
        self.reboot = reboot
        self.notify = notify or (lambda code, image_id, reason="": None)
        self.budget = budget
        self.max_datagram = max_datagram
        self._window = window
        self.path = state_path(writer.slots)
        self.report = report or (lambda event, detail="": None)
        if _status is not None:
            user_report = self.report

            def report_both(event, detail=""):
                _status.set("update", "last", event)
                _status.log("update: %s %s" % (event, detail))
                user_report(event, detail)

            self.report = report_both
        self.stats = {"requests": 0, "request_bytes": 0, "chunks": 0, "rejected_chunks": 0, "stray_chunks": 0}
        self.active = False
        self.version = (0, 0, 0)
        self.size = 0
        self.digest = b""
        self.iid = b""
        self.chunk = chunk_for(max_datagram)
        self._win = (0, 0)
        self._last = 0
        self._backoff = self.RETRY_MS
        self._unanswered = 0
        self._budget_wait = False
        self._reserved = 0  # update-budget bytes charged for answers still to come
        self.unsettled = False  # a verified image is on trial: report it once the trial ends
        self.state = "idle"

    # ---- what this device holds, on flash (state/ota) --------------------------------------------
    def _save(self, kind):
        import binascii

        from cellguard import atomic

        v = self.version
        atomic.write_atomic(self.path, kind + b" %d %d %d " % (v[0], v[1], v[2]) + binascii.hexlify(self.digest)
                            + b" %d" % self.chunk)

    def _load(self):
        import binascii

        from cellguard import atomic

        try:
            f = atomic.read_bytes(self.path).split()
            return f[0], (int(f[1]), int(f[2]), int(f[3])), binascii.unhexlify(f[4]), int(f[5])
        except (OSError, ValueError, IndexError):
            return None

    def _forget(self):
        from cellguard import atomic

        atomic.remove(self.path)

    def _held(self):
        """(kind, version, digest, chunk) of the download in progress (b"d") or of the verified image
        waiting for its reboot (b"v"), or None."""
        from cgboot import slots

        rec = self._load()
        if rec is not None and rec[0] == b"v":
            st = self.writer.slots.read_state()
            return rec if st is not None and st.mode == slots.PENDING else None
        p = self.writer.pending()
        if p is None:
            return None
        if rec is None or rec[2] != p[1]:  # a download an older firmware started: version unknown
            return b"d", (0, 0, 0), p[1], chunk_for(self.max_datagram)
        return rec

    def _settle(self):
        # The boot after a verified image: tell the hub how it went (installed, or reverted).
        from cgboot import slots

        rec = self._load()
        if rec is None or rec[0] != b"v":
            return
        st = self.writer.slots.read_state()
        if st is not None and st.mode in (slots.PENDING, slots.TESTING):
            # Not booted yet, or on trial: "installed" only once it is confirmed (tick() looks again).
            self.unsettled = st.mode == slots.TESTING
            return
        self.unsettled = False
        iid = rec[2][:4]
        if rec[1] == self.running:
            self._set_state("installed %d.%d.%d" % self.running)
            self.notify(STATUS_INSTALLED, iid, "")
        else:
            reason = "reverted: %s" % (st.reason if st is not None else "")
            self._set_state("refused: " + reason)
            self.notify(STATUS_REFUSED, iid, reason)
        self._forget()

    def _set_state(self, text):
        self.state = text
        if _status is not None:
            _status.set("update", "state", text)

    # ---- the records -----------------------------------------------------------------------------
    def resume(self):
        """After a reboot: report how a verified image's trial went, and continue an interrupted
        download (if any) from the first byte not on the flash. True if a download goes on."""
        self._settle()
        if self.active:  # an offer came first and carries on already
            return False
        held = self._held()
        if held is None or held[0] != b"d":
            return False
        size, digest, _off = self.writer.pending()
        self._take(held[1], size, digest, held[3])
        self.report("update_resume", "%d of %d bytes" % (_off, size))
        self._ask()
        return True

    def handle(self, record):
        """Feed one downlink record; returns True if it was an update record."""
        kind = record[0]
        if kind == "update_offer":
            self._offer(record)
        elif kind == "image_chunk":
            self._chunk(record[1], record[2], record[3])
        elif kind == "no_image":
            self._no_image(record[1], record[2])
        else:
            if kind == "chunk":  # the old, unnamed CHUNK: not asked for by this firmware
                self.stats["stray_chunks"] += 1
                return True
            return False
        return True

    def _offer(self, record):
        _, major, minor, revision, size, digest, chunk = record
        version = (major, minor, revision)
        iid = digest[:4]
        if self.active and digest == self.digest:
            # A re-offer: the hub hears us again. Ask now rather than at the end of a backoff, unless
            # a request is fresh (its answers may be on their way) or the budget is what waits.
            if not self._budget_wait and self._ticks_diff(self.clock(), self._last) >= self.RETRY_MS:
                self._backoff = self.RETRY_MS
                self._ask()
            return
        if version <= self.running:
            self.report("update_refused", "not newer than %d.%d.%d" % self.running)
            self.notify(STATUS_INSTALLED if version == self.running else STATUS_SUPERSEDED, iid,
                        "running %d.%d.%d" % self.running)
            return
        held = self._held()
        if held is not None:
            kind, hv, hd, hchunk = held
            if hd == digest:
                if kind == b"v":
                    self._set_state("verified, reboot pending")
                    return
                self._start(version, size, digest, hchunk or chunk)  # carries on from the flash
                return
            if version <= hv:  # older than (or as old as) what is downloading or waiting to boot
                self.report("update_refused", "holds %d.%d.%d" % hv)
                self.notify(STATUS_SUPERSEDED, iid, "holds %d.%d.%d" % hv)
                return
        self._start(version, size, digest, chunk)

    def _take(self, version, size, digest, chunk):
        self.version = version
        self.size = size
        self.digest = bytes(digest)
        self.iid = self.digest[:4]
        self.chunk = max(16, min(chunk, chunk_for(self.max_datagram)))
        self.window = self._window or WINDOW or max(1, min(8, WINDOW_BYTES // self.chunk))
        self.active = True
        self._backoff = self.RETRY_MS
        self._unanswered = 0
        self._win = (0, 0)

    def _start(self, version, size, digest, chunk):
        from cgboot.update import UpdateError

        try:
            off = self.writer.offer(size, digest)  # the same offer again resumes where the slot ends
        except UpdateError as e:
            self.report("update_refused", e.reason)
            self._set_state("refused: " + e.reason)
            if e.reason not in ("busy", "no_state"):  # those pass: the hub offers again later
                self.notify(STATUS_REFUSED, digest[:4], e.reason)
            return
        self._take(version, size, digest, chunk)
        self._save(b"d")
        self.report("update_offer", "%d.%d.%d %d bytes from %d" % (version + (size, off)))
        self._ask(off)

    def _chunk(self, iid, offset, data):
        from cgboot.update import UpdateError

        self._received(len(data))
        if not self.active or iid != self.iid:
            self.stats["stray_chunks"] += 1  # another image's, or a late one: never written
            return
        end = self._win[1]  # the furthest byte asked for (a late chunk of an earlier window is fine)
        if offset < 0 or offset + len(data) > end or len(data) != min(self.chunk, self.size - offset):
            self.stats["rejected_chunks"] += 1  # not what was asked for: nothing of it is written
            self.report("chunk_rejected", "%d bytes at %d" % (len(data), offset))
            return
        try:
            off = self.writer.write(offset, data)
        except UpdateError as e:
            self.stats["rejected_chunks"] += 1
            self.report("chunk_rejected", e.reason)
            return
        if off > offset:  # progress: the link works
            self.stats["chunks"] += 1
            self._unanswered = 0
            self._backoff = self.RETRY_MS
            self._last = self.clock()
            self._set_state("downloading %d/%d" % (off, self.size))
        if offset + len(data) >= end:  # the window's last chunk: the next window (or the gap again)
            self._ask(off)

    def _no_image(self, iid, reason):
        held = self._held()
        if not (self.active and iid == self.iid) and not (held and held[0] == b"d" and held[2][:4] == iid):
            return
        # The hub no longer publishes it (a newer image replaced it: its offer follows in the same
        # datagram). Drop the download: nothing of another image may be mixed into it.
        self.writer.pending()
        self.writer.abandon()
        self._forget()
        self.active = False
        self._set_state("refused: withdrawn by the hub")
        self.report("update_withdrawn", "reason %d" % reason)

    # ---- asking --------------------------------------------------------------------------------
    def tick(self):
        """Call from the application loop: asks again after a gap (backoff up to 10 min, never
        giving up), and resumes when the update budget allows again."""
        if self.unsettled:
            self._settle()  # only while an image is on trial: minutes
        if not self.active:
            return
        wait = self.RETRY_MS if self._budget_wait else self._backoff
        if self._ticks_diff(self.clock(), self._last) < wait:
            return
        if not self._budget_wait:
            b = min(self._backoff * 2, self.MAX_BACKOFF_MS)
            self._backoff = b + (self._random(1)[0] - 128) * b // 512  # +-25 %: a fleet does not sync
        self._ask()

    def _received(self, n):
        # A chunk datagram reached the device: paid from what its request reserved, or now.
        if self.budget is None:
            return
        n += CHUNK_OVERHEAD + WIRE
        if self._reserved >= n:
            self._reserved -= n
        else:
            self.budget.spend(n - self._reserved)
            self._reserved = 0

    def _ask(self, off=None):
        # Ask for the next window, or (everything is here, e.g. a cut came after the last chunk)
        # verify the whole image, mark it for test and reboot into the trial.
        self._last = self.clock()
        if off is None:
            off = self.writer.slots.slot_bytes(self.writer.slot)
        left = self.size - off
        if left <= 0:
            self._finish()
            return
        count = min(self.window, (left + self.chunk - 1) // self.chunk)
        answer = min(left, count * self.chunk) + count * (CHUNK_OVERHEAD + WIRE)
        if self.budget is not None and self._reserved:
            # What the last request's answer did not bring never reached the air: given back, so a
            # coverage gap does not spend the day's bytes on requests nobody answered.
            self.budget.spend(-self._reserved)
            self._reserved = 0
        if self.budget is not None and not self.budget.allows(REQUEST_MAX + answer):
            self._budget_wait = True  # today's update bytes are spent: readings go on, this waits
            self._set_state("waiting for the update budget")
            return
        self._budget_wait = False
        sent = self.request(off, self.chunk, count, self.iid)
        self._unanswered += 1
        if sent and self.budget is not None:
            # Both directions, charged before the answer comes: the request and all it can bring.
            self.budget.spend(sent + WIRE + answer)
            self._reserved = answer
        if sent:
            self.stats["requests"] += 1
            self.stats["request_bytes"] += sent
            self._win = (off, max(self._win[1], off + min(left, count * self.chunk)))
        if not sent or self._unanswered > self.COVERAGE_AFTER:
            self._set_state("waiting for coverage")
        else:
            self._set_state("downloading %d/%d" % (off, self.size))

    def _finish(self):
        from cgboot.image import Rejected
        from cgboot.update import UpdateError

        self.active = False
        try:
            info = self.writer.finish()
        except (UpdateError, Rejected) as e:
            reason = getattr(e, "reason", str(e))
            self._forget()
            self._set_state("refused: " + reason)
            self.report("update_rejected", reason)
            self.notify(STATUS_REFUSED, self.iid, reason)
            return
        self._save(b"v")
        self._set_state("verified, reboot pending")
        self.report("update_ready", info.version_str())
        self.reboot()
