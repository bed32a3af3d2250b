"""Over-the-air updates on the hub: publish a signed image to one device or to all, serve its chunks.

`publish()` stores the image once (by SHA-256), assigns it to the chosen key ids, and queues an
UPDATE OFFER record (version from the image's MCUboot header, size, SHA-256, chunk size) for each;
the hub's command delivery then carries the offer exactly once. `provider(store)` is the hub's
`update_provider`: it answers a device's CHUNK REQ from the image assigned to that device's key id.
The device verifies the whole image with its own boot part, so the hub never needs the signing key.
"""

from __future__ import annotations

import hashlib
import sqlite3
import struct
from pathlib import Path

IMAGE_MAGIC = 0x96F3B83D
MAX_CHUNK = 1024  # a device asking for more gets this much: a datagram stays small

SCHEMA = """
CREATE TABLE IF NOT EXISTS update_images (sha256 BLOB PRIMARY KEY, image BLOB NOT NULL, version TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS update_targets (
    key_id INTEGER PRIMARY KEY, sha256 BLOB NOT NULL, published REAL NOT NULL DEFAULT (julianday('now'))
);
"""


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
    db.commit()


def publish(store, image: bytes, key_ids: list[int] | None = None, chunk: int = 256) -> list[int]:
    """Offer `image` to `key_ids` (None: every live, unsuspended device). Returns the key ids offered."""
    from cghub import proto as hp

    version = image_version(image)
    digest = hashlib.sha256(image).digest()
    db = store.db
    ensure_schema(db)
    if key_ids is None:
        key_ids = [r[0] for r in db.execute("SELECT key_id FROM devices WHERE retired=0 AND suspended=0 ORDER BY key_id")]
    record = hp.update_offer_record(*version, len(image), digest, min(chunk, MAX_CHUNK))
    with db:
        db.execute(
            "INSERT OR IGNORE INTO update_images (sha256, image, version) VALUES (?, ?, ?)",
            (digest, image, "%d.%d.%d" % version),
        )
        for kid in key_ids:
            if store.device(kid) is None:
                raise PublishError(f"unknown key id {kid}")
            db.execute("INSERT OR REPLACE INTO update_targets (key_id, sha256) VALUES (?, ?)", (kid, digest))
    for kid in key_ids:
        store.queue_command(kid, record)
    return key_ids


def provider(store):
    """The hub's update_provider: (key_id, offset, length) -> the bytes of that device's image."""
    ensure_schema(store.db)

    def chunk(key_id: int, offset: int, length: int) -> bytes:
        row = store.db.execute(
            "SELECT i.image FROM update_targets t JOIN update_images i ON i.sha256 = t.sha256 WHERE t.key_id=?",
            (key_id,),
        ).fetchone()
        if row is None or offset < 0:
            return b""
        return bytes(row[0][offset : offset + max(0, min(length, MAX_CHUNK))])

    return chunk


def publish_file(store, path: Path, key_ids: list[int] | None, chunk: int) -> list[int]:
    return publish(store, path.read_bytes(), key_ids, chunk)
