"""Over-the-air updates on the hub: publish a signed image to one device or to all, offer it until the
device reports it installed, refused or superseded, and serve chunks of exactly the image asked for.

`publish()` stores the image once (by SHA-256) and makes it the target of the chosen key ids (a new
publication replaces a device's previous target, which is then no longer served to it). `Updates`
is the hub's `update_provider`, with two hooks in the datagram path (server.py):

- `serve(key_id, plain, new, batch)`: a CHUNK REQ names its image by id (the first 4 bytes of the SHA-256)
  and asks for a window of chunks; each is answered in a datagram of its own (IMAGE CHUNK). An image
  that is not the device's target is answered with NO IMAGE, followed by the target's offer. A
  duplicate request (a replay) is not answered: the device asks again under a new sequence number.
- `offer(key_id, ctrl, plain, new, batch)`: records to add to the ack datagram of a new uplink: the
  target's UPDATE OFFER on the device's first uplink, after each HELLO, and after an hour with neither
  a request nor an offer, until an UPDATE STATUS ends it; and it takes those UPDATE STATUS reports.
  Never on a duplicate's ack, which the amplification rule may withhold: a replay cannot use up an
  offer.

What changes (offered, served, the device's status) goes into the hub's batch and is committed in its
one transaction, before the answer leaves; everything goes through the Store interface (cghub.store),
so any backend of it serves updates. The device verifies the whole image with its own boot part, so
the hub never needs the signing key.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import time
from collections.abc import Callable
from pathlib import Path

from cghub import proto as hp
from cghub.store import Batch, UpdateTarget

log = logging.getLogger("cellguard.hub.updates")

IMAGE_MAGIC = 0x96F3B83D
MAX_CHUNK = 1024  # a device asking for more gets this much: a datagram stays small
MAX_WINDOW = 8  # chunks per request: the modem buffers 16 datagrams (docs/modem.md)
DEFAULT_CHUNK = MAX_CHUNK  # offered: the device takes the most its modem's datagram holds
REOFFER_S = 3600  # quiet this long (no request, no offer): offer again on the next uplink
OPEN_STATES = ("offered", "downloading")
STATUS_STATES = {hp.UPDATE_INSTALLED: "installed", hp.UPDATE_REFUSED: "refused", hp.UPDATE_SUPERSEDED: "superseded"}


class PublishError(ValueError):
    pass


def image_version(image: bytes) -> tuple[int, int, int]:
    """(major, minor, revision) from an MCUboot header; refuses anything that is not one."""
    if len(image) < 32 or struct.unpack_from("<I", image, 0)[0] != IMAGE_MAGIC:
        raise PublishError("not an MCUboot image (bad magic)")
    major, minor, revision = struct.unpack_from("<BBH", image, 20)
    return major, minor, revision


def publish(store, image: bytes, key_ids: list[int] | None = None, chunk: int = DEFAULT_CHUNK) -> list[int]:
    """Make `image` the target of `key_ids` (None: every live, unsuspended device); the offer goes
    out with the next ack to each. Returns the key ids offered."""
    version = image_version(image)
    digest = hashlib.sha256(image).digest()
    if key_ids is None:
        key_ids = [d.key_id for d in store.devices() if not d.retired and not d.suspended]
    unknown = sorted(set(key_ids) - store.known_key_ids(key_ids))  # no key is unsealed to ask
    if unknown:
        raise PublishError(f"unknown key id {unknown[0]}")
    store.publish_update(image, digest, "%d.%d.%d" % version, key_ids, max(16, min(chunk, MAX_CHUNK)))
    return key_ids


class Updates:
    """The hub's update_provider (see the module docstring)."""

    def __init__(self, store, clock: Callable[[], float] = time.time):
        self.store = store
        self.clock = clock
        self._cache: dict[int, UpdateTarget | None] = {}  # key id -> its target (None: none), hub path only

    def forget(self, key_id: int | None = None) -> None:
        """Drop cached targets (one key id, or all). The hub calls it with its own cache's: for the key
        ids an operator changed (publish leaves a change-log row), and for all after a failed commit."""
        if key_id is None:
            self._cache.clear()
        else:
            self._cache.pop(key_id, None)

    def _target(self, key_id: int, batch: Batch | None) -> UpdateTarget | None:
        # Asked on every uplink: cached in the hub's path (no read per datagram), the image's size and
        # header only, never its bytes; a change made earlier in the batch is what this datagram sees.
        # Called on its own (no batch, no hub to say what changed), it reads the store.
        if batch is None:
            return self.store.update_target(key_id)
        t = batch.updates.get(key_id)
        if t is None:
            if key_id not in self._cache:
                self._cache[key_id] = self.store.update_target(key_id)
            t = self._cache[key_id]
        return t

    def _write(self, t: UpdateTarget, batch: Batch | None) -> None:
        # With the hub's batch (one transaction, before the answer leaves); alone, its own commit.
        if batch is None:
            self.store.commit_batch(Batch(updates={t.key_id: t}))
        else:
            batch.updates[t.key_id] = t

    def target(self, key_id: int) -> dict | None:
        """The device's update: version, state, reason, bytes served, when last offered and asked."""
        t = self.store.update_target(key_id)
        if t is None:
            return None
        return {k: t[k] for k in ("version", "state", "reason", "served_bytes", "offered_at", "last_req")}

    @staticmethod
    def _offer_record(t: UpdateTarget) -> bytes:
        return hp.update_offer_record(*image_version(t.header), t.size, t.sha256, t.chunk)

    def _mark_offered(self, t: UpdateTarget, batch: Batch | None) -> None:
        t.offered_at = self.clock()
        self._write(t, batch)

    # ---- hook: records riding on the ack datagram ------------------------------------------------
    def offer(self, key_id: int, ctrl: int | None, plain: bytes, new: bool, batch: Batch | None = None) -> bytes:
        if not new:  # a duplicate's answer may be withheld (no amplification): the offer waits for a new one
            return b""
        if ctrl == hp.CTRL_UPDATE_STATUS:
            self._status(key_id, plain, batch)
        t = self._target(key_id, batch)
        if t is None or t.state not in OPEN_STATES:
            return b""
        quiet_since = max(t.offered_at or 0, t.last_req or 0)
        hello = ctrl == hp.CTRL_HELLO  # a boot
        if t.offered_at is None or hello or self.clock() - quiet_since >= REOFFER_S:
            self._mark_offered(t, batch)
            return self._offer_record(t)
        return b""

    def _status(self, key_id: int, plain: bytes, batch: Batch | None) -> None:
        try:
            code, iid, reason = hp.parse_update_status(plain)
        except hp.ProtocolError as e:
            log.warning("key id %d: %s", key_id, e)
            return
        t = self._target(key_id, batch)
        state = STATUS_STATES.get(code)
        if t is None or state is None or t.sha256[:4] != iid:
            log.info("key id %d: update status %d for image %s (not its target)", key_id, code, iid.hex())
            return
        t.state, t.reason = state, reason
        self._write(t, batch)
        log.info("key id %d: update %s %s %s", key_id, t.version, state, reason)

    # ---- hook: a CHUNK REQ ---------------------------------------------------------------------
    def serve(self, key_id: int, plain: bytes, new: bool, batch: Batch | None = None) -> list[bytes]:
        """Downlink payloads answering one CHUNK REQ (each sealed into a datagram of its own)."""
        if not new:
            return []
        try:
            off, length, count, iid = hp.parse_chunk_request(plain)
        except hp.ProtocolError as e:
            log.warning("key id %d: %s", key_id, e)
            return []
        t = self._target(key_id, batch)
        if iid is None:  # older firmware: one unnamed chunk of the device's target
            data = self.store.image_bytes(t.sha256, off, max(0, min(length, MAX_CHUNK))) if t is not None else b""
            return [hp.chunk_record(off, data)] if data else []  # nothing published, or past its end: nothing
        if t is None or t.sha256[:4] != iid:
            # Never another image's bytes: say so, and offer what is published now, at once.
            if t is None:
                return [hp.no_image_record(iid, hp.NO_IMAGE_UNKNOWN)]
            self._mark_offered(t, batch)
            return [hp.no_image_record(iid, hp.NO_IMAGE_SUPERSEDED) + self._offer_record(t)]
        length = max(1, min(length, MAX_CHUNK))
        count = max(1, min(count, MAX_WINDOW))
        window = self.store.image_bytes(t.sha256, off, length * count) if off < t.size else b""
        out = [
            hp.image_chunk_record(iid, off + i, window[i : i + length]) for i in range(0, len(window), length)
        ]
        t.last_req = self.clock()
        t.served_bytes += sum(len(p) for p in out)
        if t.state == "offered":
            t.state = "downloading"
        self._write(t, batch)
        return out


def provider(store, clock: Callable[[], float] = time.time) -> Updates:
    """The hub's update_provider over `store` (what `cellguard hub serve` installs)."""
    return Updates(store, clock)


def serve_request(provider_, key_id: int, plain: bytes, new: bool, batch: Batch | None = None) -> list[bytes]:
    """server.py's hook for a CHUNK REQ: an `Updates`, or a plain (key_id, offset, length) -> bytes
    callable (tests, tools) answering the 7-byte request with one CHUNK. What it changes goes into
    `batch` (the hub's, committed before the answer leaves)."""
    if provider_ is None or not new:  # a duplicate (a replay) buys no chunks, whatever the provider
        return []
    if isinstance(provider_, Updates):
        return provider_.serve(key_id, plain, new, batch)
    off, n, _count, _iid = hp.parse_chunk_request(plain)
    chunk = provider_(key_id, off, n)
    return [hp.chunk_record(off, chunk)] if chunk else []  # nothing published: nothing sent


def ack_records(
    provider_, key_id: int, ctrl: int | None, plain: bytes, new: bool, batch: Batch | None = None
) -> bytes:
    """server.py's hook on the ack datagram: an offer to add, and UPDATE STATUS taken (into `batch`)."""
    if isinstance(provider_, Updates):
        return provider_.offer(key_id, ctrl, plain, new, batch)
    return b""


def publish_file(store, path: Path, key_ids: list[int] | None, chunk: int) -> list[int]:
    return publish(store, path.read_bytes(), key_ids, chunk)
