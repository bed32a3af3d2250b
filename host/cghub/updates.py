"""Over-the-air updates on the hub: publish a signed image to one device or to all, offer it until the
device reports it installed, refused or superseded, and serve chunks of exactly the image asked for.

`publish()` stores the image once (by SHA-256) and makes it the target of the chosen key ids (a new
publication replaces a device's previous target, which is then no longer served to it). `Updates`
is the hub's `update_provider`, with two hooks in the datagram path (server.py):

- `serve(key_id, plain, new)`: a CHUNK REQ names its image by id (the first 4 bytes of the SHA-256)
  and asks for a window of chunks; each is answered in a datagram of its own (IMAGE CHUNK). An image
  that is not the device's target is answered with NO IMAGE, followed by the target's offer. A
  duplicate request (a replay) is not answered: the device asks again under a new sequence number.
- `offer(key_id, ctrl, plain, new)`: records to add to the ack datagram: the target's UPDATE OFFER
  on the device's first uplink, after each HELLO, and after an hour with neither a request nor an
  offer, until an UPDATE STATUS ends it; and it takes those UPDATE STATUS reports.

The device verifies the whole image with its own boot part, so the hub never needs the signing key.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import struct
import time
from collections.abc import Callable
from pathlib import Path

from cghub import proto as hp

log = logging.getLogger("cellguard.hub.updates")

IMAGE_MAGIC = 0x96F3B83D
MAX_CHUNK = 1024  # a device asking for more gets this much: a datagram stays small
MAX_WINDOW = 8  # chunks per request: the modem buffers 16 datagrams (docs/modem.md)
DEFAULT_CHUNK = MAX_CHUNK  # offered: the device takes the most its modem's datagram holds
REOFFER_S = 3600  # quiet this long (no request, no offer): offer again on the next uplink
OPEN_STATES = ("offered", "downloading")
STATUS_STATES = {hp.UPDATE_INSTALLED: "installed", hp.UPDATE_REFUSED: "refused", hp.UPDATE_SUPERSEDED: "superseded"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS update_images (sha256 BLOB PRIMARY KEY, image BLOB NOT NULL, version TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS update_targets (
    key_id INTEGER PRIMARY KEY, sha256 BLOB NOT NULL, published REAL NOT NULL DEFAULT (julianday('now'))
);
"""
# Columns added to update_targets (an older hub's database gains them on first use).
_TARGET_COLUMNS = {
    "state": "TEXT NOT NULL DEFAULT 'offered'",
    "reason": "TEXT NOT NULL DEFAULT ''",
    "chunk": "INTEGER NOT NULL DEFAULT 1024",
    "offered_at": "REAL",
    "last_req": "REAL",
    "served_bytes": "INTEGER NOT NULL DEFAULT 0",
}


class PublishError(ValueError):
    pass


def image_version(image: bytes) -> tuple[int, int, int]:
    """(major, minor, revision) from an MCUboot header; refuses anything that is not one."""
    if len(image) < 32 or struct.unpack_from("<I", image, 0)[0] != IMAGE_MAGIC:
        raise PublishError("not an MCUboot image (bad magic)")
    major, minor, revision = struct.unpack_from("<BBH", image, 20)
    return major, minor, revision


def ensure_schema(db: sqlite3.Connection) -> None:
    db.executescript(SCHEMA)
    have = {r[1] for r in db.execute("PRAGMA table_info(update_targets)")}
    for name, decl in _TARGET_COLUMNS.items():
        if name not in have:
            db.execute(f"ALTER TABLE update_targets ADD COLUMN {name} {decl}")
    db.commit()


def publish(store, image: bytes, key_ids: list[int] | None = None, chunk: int = DEFAULT_CHUNK) -> list[int]:
    """Make `image` the target of `key_ids` (None: every live, unsuspended device); the offer goes
    out with the next ack to each. Returns the key ids offered."""
    version = image_version(image)
    digest = hashlib.sha256(image).digest()
    db = store.db
    ensure_schema(db)
    if key_ids is None:
        key_ids = [r[0] for r in db.execute("SELECT key_id FROM devices WHERE retired=0 AND suspended=0 ORDER BY key_id")]
    for kid in key_ids:
        if store.device(kid) is None:
            raise PublishError(f"unknown key id {kid}")
    with db:
        db.execute(
            "INSERT OR IGNORE INTO update_images (sha256, image, version) VALUES (?, ?, ?)",
            (digest, image, "%d.%d.%d" % version),
        )
        for kid in key_ids:
            db.execute(
                "INSERT OR REPLACE INTO update_targets (key_id, sha256, state, chunk) VALUES (?, ?, 'offered', ?)",
                (kid, digest, max(16, min(chunk, MAX_CHUNK))),
            )
    return key_ids


class Updates:
    """The hub's update_provider (see the module docstring)."""

    def __init__(self, store, clock: Callable[[], float] = time.time):
        self.store = store
        self.clock = clock
        ensure_schema(store.db)

    def _target(self, key_id: int) -> sqlite3.Row | None:
        # Asked on every uplink: the image's size and header only, never its bytes.
        return self.store.db.execute(
            "SELECT t.*, i.version, length(i.image) AS size, substr(i.image, 1, 32) AS header "
            "FROM update_targets t JOIN update_images i ON i.sha256 = t.sha256 WHERE t.key_id=?",
            (key_id,),
        ).fetchone()

    def _bytes(self, digest: bytes, offset: int, n: int) -> bytes:
        row = self.store.db.execute(
            "SELECT substr(image, ?, ?) FROM update_images WHERE sha256=?", (offset + 1, n, digest)
        ).fetchone()
        return bytes(row[0]) if row is not None else b""

    def target(self, key_id: int) -> dict | None:
        """The device's update: version, state, reason, bytes served, when last offered and asked."""
        row = self._target(key_id)
        if row is None:
            return None
        return {k: row[k] for k in ("version", "state", "reason", "served_bytes", "offered_at", "last_req")}

    @staticmethod
    def _offer_record(row: sqlite3.Row) -> bytes:
        return hp.update_offer_record(*image_version(row["header"]), row["size"], row["sha256"], row["chunk"])

    def _mark_offered(self, key_id: int) -> None:
        with self.store.db:
            self.store.db.execute("UPDATE update_targets SET offered_at=? WHERE key_id=?", (self.clock(), key_id))

    # ---- hook: records riding on the ack datagram ------------------------------------------------
    def offer(self, key_id: int, ctrl: int | None, plain: bytes, new: bool) -> bytes:
        if ctrl == hp.CTRL_UPDATE_STATUS and new:
            self._status(key_id, plain)
        row = self._target(key_id)
        if row is None or row["state"] not in OPEN_STATES:
            return b""
        quiet_since = max(row["offered_at"] or 0, row["last_req"] or 0)
        hello = ctrl == hp.CTRL_HELLO and new  # a boot (a duplicate HELLO is only a lost ack)
        if row["offered_at"] is None or hello or self.clock() - quiet_since >= REOFFER_S:
            self._mark_offered(key_id)
            return self._offer_record(row)
        return b""

    def _status(self, key_id: int, plain: bytes) -> None:
        try:
            code, iid, reason = hp.parse_update_status(plain)
        except hp.ProtocolError as e:
            log.warning("key id %d: %s", key_id, e)
            return
        row = self._target(key_id)
        state = STATUS_STATES.get(code)
        if row is None or state is None or row["sha256"][:4] != iid:
            log.info("key id %d: update status %d for image %s (not its target)", key_id, code, iid.hex())
            return
        with self.store.db:
            self.store.db.execute(
                "UPDATE update_targets SET state=?, reason=? WHERE key_id=?", (state, reason, key_id)
            )
        log.info("key id %d: update %s %s %s", key_id, row["version"], state, reason)

    # ---- hook: a CHUNK REQ ---------------------------------------------------------------------
    def serve(self, key_id: int, plain: bytes, new: bool) -> list[bytes]:
        """Downlink payloads answering one CHUNK REQ (each sealed into a datagram of its own)."""
        if not new:
            return []
        try:
            off, length, count, iid = hp.parse_chunk_request(plain)
        except hp.ProtocolError as e:
            log.warning("key id %d: %s", key_id, e)
            return []
        row = self._target(key_id)
        if iid is None:  # older firmware: one unnamed chunk of the device's target
            data = self._bytes(row["sha256"], off, max(0, min(length, MAX_CHUNK))) if row is not None else b""
            return [hp.chunk_record(off, data)] if data else []  # nothing published, or past its end: nothing
        if row is None or row["sha256"][:4] != iid:
            # Never another image's bytes: say so, and offer what is published now, at once.
            if row is None:
                return [hp.no_image_record(iid, hp.NO_IMAGE_UNKNOWN)]
            self._mark_offered(key_id)
            return [hp.no_image_record(iid, hp.NO_IMAGE_SUPERSEDED) + self._offer_record(row)]
        length = max(1, min(length, MAX_CHUNK))
        count = max(1, min(count, MAX_WINDOW))
        window = self._bytes(row["sha256"], off, length * count) if off < row["size"] else b""
        out = [
            hp.image_chunk_record(iid, off + i, window[i : i + length]) for i in range(0, len(window), length)
        ]
        with self.store.db:
            self.store.db.execute(
                "UPDATE update_targets SET last_req=?, served_bytes=served_bytes+?, "
                "state=CASE WHEN state='offered' THEN 'downloading' ELSE state END WHERE key_id=?",
                (self.clock(), sum(len(p) for p in out), key_id),
            )
        return out


def provider(store, clock: Callable[[], float] = time.time) -> Updates:
    """The hub's update_provider over `store` (what `cellguard hub serve` installs)."""
    return Updates(store, clock)


def serve_request(provider_, key_id: int, plain: bytes, new: bool) -> list[bytes]:
    """server.py's hook for a CHUNK REQ: an `Updates`, or a plain (key_id, offset, length) -> bytes
    callable (tests, tools) answering the 7-byte request with one CHUNK."""
    if provider_ is None:
        return []
    if isinstance(provider_, Updates):
        return provider_.serve(key_id, plain, new)
    off, n, _count, _iid = hp.parse_chunk_request(plain)
    chunk = provider_(key_id, off, n)
    return [hp.chunk_record(off, chunk)] if chunk else []  # nothing published: nothing sent


def ack_records(provider_, key_id: int, ctrl: int | None, plain: bytes, new: bool) -> bytes:
    """server.py's hook on the ack datagram: an offer to add, and UPDATE STATUS taken."""
    if isinstance(provider_, Updates):
        return provider_.offer(key_id, ctrl, plain, new)
    return b""


def publish_file(store, path: Path, key_ids: list[int] | None, chunk: int) -> list[int]:
    return publish(store, path.read_bytes(), key_ids, chunk)
