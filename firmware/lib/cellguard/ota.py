# Over-the-air update session: the application's glue between downlink records and the boot part.
#
# The hub sends an UPDATE OFFER record (version, size, SHA-256 of the signed image, chunk size);
# the device asks for chunks (CHUNK REQ uplink, offset + length) and the hub answers with CHUNK
# records. This module turns those records into calls on cgboot's UpdateWriter, which writes the
# inactive slot resumably, verifies the whole image and marks it for a trial boot; then it asks
# for a reboot. It takes the records as the messaging layer's downlink parser yields them
# (("update_offer", major, minor, revision, size, sha256, chunk), ("chunk", offset, data)) and
# sends through the callbacks it is handed, so it runs with no network in tests.
#
# Wiring (messaging layer, docs/protocol.md): outbox.on_command = session.handle for the
# "update_offer" and "chunk" records, and request = send chunk_request_payload(off, n) as a control
# datagram (CHUNK REQ, sent directly, not through the outbox).

from cellguard.wire import CTRL_CHUNK_REQ

try:  # the status registry (board layer); updates work without it
    from cellguard import status as _status
except ImportError:
    _status = None


def chunk_request_payload(offset, length):
    """The control payload of a CHUNK REQ uplink: type, u32 offset, u16 length (big-endian)."""
    return bytes([CTRL_CHUNK_REQ]) + offset.to_bytes(4, "big") + length.to_bytes(2, "big")


class OtaSession:
    """request(offset, length): send a CHUNK REQ. reboot(): restart into the trial boot.
    report(event, detail): tell the hub/status what happened (optional)."""

    RETRY_MS = 5000  # no chunk for this long: ask again (a CHUNK REQ or its answer was lost)
    MAX_RETRIES = 30  # then give up until the next boot (the download resumes from the flash)

    def __init__(self, writer, running_version, request, reboot, report=None, clock=None):
        from cellguard import runtime

        self.clock = clock or runtime.ticks_ms
        self._ticks_diff = runtime.ticks_diff
        self._last = 0
        self.retries = 0
        self.writer = writer
        self.running = tuple(running_version[:3])  # (major, minor, revision) of the booted image
        self.request = request
        self.reboot = reboot
        self.report = report or (lambda event, detail="": None)
        if _status is not None:
            user_report = self.report

            def report_both(event, detail=""):
                _status.set("update", "last", event)
                _status.log("update: %s %s" % (event, detail))
                user_report(event, detail)

            self.report = report_both
        self.chunk = 256
        self.size = 0
        self.active = False

    def resume(self, chunk=256):
        """After a reboot: continue an interrupted download (if any) by asking for the next chunk."""
        pending = self.writer.pending()
        if pending is None:
            return False
        self.size, _digest, off = pending
        self.chunk = chunk
        self.active = True
        self._next(off)
        return True

    def handle(self, record):
        """Feed one downlink record; returns True if it was an update record."""
        kind = record[0]
        if kind == "update_offer":
            self._offer(record)
        elif kind == "chunk" and self.active:
            self._chunk(record[1], record[2])
        else:
            return kind == "chunk"
        return True

    def _offer(self, record):
        from cgboot.update import UpdateError

        _, major, minor, revision, size, digest, chunk = record
        if (major, minor, revision) <= self.running:
            self.report("update_refused", "not newer than %d.%d.%d" % self.running)
            return
        try:
            off = self.writer.offer(size, digest)
        except UpdateError as e:
            self.report("update_refused", e.reason)
            return
        self.size = size
        self.chunk = max(16, min(chunk, 1024))
        self.active = True
        self.report("update_offer", "%d.%d.%d %d bytes from %d" % (major, minor, revision, size, off))
        self._next(off)

    def _chunk(self, offset, data):
        from cgboot.update import UpdateError

        if not data:  # the hub has no such image (any more): stop asking
            self._failed(UpdateError("no_data"))
            return

        try:
            off = self.writer.write(offset, data)
        except UpdateError as e:
            self._failed(e)
            return
        if off > offset:
            self.retries = 0  # progress
        self._next(off)

    def _failed(self, e):
        self.active = False
        self.report("update_rejected", getattr(e, "reason", str(e)))

    def tick(self):
        """Call from the application loop: re-asks for the chunk a lost datagram left missing."""
        if not self.active or self._ticks_diff(self.clock(), self._last) < self.RETRY_MS:
            return
        self.retries += 1
        if self.retries > self.MAX_RETRIES:
            self._failed(ValueError("stalled"))  # resumable: the next boot's resume() goes on
            return
        self._next(self.writer.slots.slot_bytes(self.writer.slot))

    def _next(self, off):
        # Ask for the next chunk, or (everything is here, e.g. a cut came after the last chunk)
        # verify the whole image, mark it for test and reboot into the trial.
        self._last = self.clock()
        if off < self.size:
            self.request(off, min(self.chunk, self.size - off))
            return
        from cgboot.image import Rejected
        from cgboot.update import UpdateError

        try:
            info = self.writer.finish()
        except (UpdateError, Rejected) as e:
            self._failed(e)
            return
        self.active = False
        self.report("update_ready", info.version_str())
        self.reboot()
