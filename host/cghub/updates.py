"""Over-the-air updates on the hub: publish a signed image to one device or to all, serve its chunks.

`publish()` stores the image once (by SHA-256), assigns it to the chosen key ids, and queues an
UPDATE OFFER record (version from the image's MCUboot header, size, SHA-256, chunk size) for each;
the hub's command delivery then carries the offer exactly once. `provider(store)` is the hub's
`update_provider`: it answers a device's CHUNK REQ from the image assigned to that device's key id.
The device verifies the whole image with its own boot part, so the hub never needs the signing key.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

IMAGE_MAGIC = 0x96F3B83D
MAX_CHUNK = 1024  # a device asking for more gets this much: a datagram stays small


class PublishError(ValueError):
    pass


def image_version(image: bytes) -> tuple[int, int, int]:
    """(major, minor, revision) from an MCUboot header; refuses anything that is not one."""
    if len(image) < 32 or struct.unpack_from("<I", image, 0)[0] != IMAGE_MAGIC:
        raise PublishError("not an MCUboot image (bad magic)")
    major, minor, revision = struct.unpack_from("<BBH", image, 20)
    return major, minor, revision


def publish(store, image: bytes, key_ids: list[int] | None = None, chunk: int = 256) -> list[int]:
    """Offer `image` to `key_ids` (None: every live, unsuspended device). Returns the key ids offered.
    Works on any store (SQLite or PostgreSQL): the image and its targets go through the store."""
    from cghub import proto as hp

    version = image_version(image)
    digest = hashlib.sha256(image).digest()
    if key_ids is None:  # no root key is opened: publishing needs no KEK
        key_ids = [d.key_id for d in store.devices() if not d.retired and not d.suspended]
    unknown = set(key_ids) - store.known_key_ids(key_ids)
    if unknown:
        raise PublishError(f"unknown key id {min(unknown)}")
    record = hp.update_offer_record(*version, len(image), digest, min(chunk, MAX_CHUNK))
    store.publish_image(digest, image, "%d.%d.%d" % version, key_ids)
    for kid in key_ids:
        store.queue_command(kid, record)
    return key_ids


def provider(store):
    """The hub's update_provider: (key_id, offset, length) -> the bytes of that device's image."""

    def chunk(key_id: int, offset: int, length: int) -> bytes:
        image = store.image_for(key_id)
        if image is None or offset < 0:
            return b""
        return image[offset : offset + max(0, min(length, MAX_CHUNK))]

    return chunk


def publish_file(store, path: Path, key_ids: list[int] | None, chunk: int) -> list[int]:
    return publish(store, path.read_bytes(), key_ids, chunk)
