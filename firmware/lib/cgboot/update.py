# Resumable writer of an update into the inactive slot (the device side of over-the-air updates).
#
# The hub offers an image (size, SHA-256 of the whole signed file, version); the application feeds
# chunks as they arrive, in any transport. Progress needs no record of its own: every chunk is
# appended to the slot file and the file closed, and littlefs commits a file atomically at close,
# so after a power cut the slot file's size IS the number of bytes safely written. The offer
# itself is kept in state/update (write tmp, rename) and written only after the slot has been
# emptied, so a stale slot is never mistaken for progress. At the end the whole image is hashed
# and verified exactly as the boot part will (streamed from the file), and only then marked for a
# trial boot.
import os

from cgboot import image
from cgboot import slots as _slots

REVERTED_BEFORE = "reverted_before"


class UpdateError(Exception):
    """An offer or chunk the writer refuses; .reason is a short stable string."""

    def __init__(self, reason, detail=""):
        super().__init__(reason, detail)
        self.reason = reason


class UpdateWriter:
    def __init__(self, slots):
        self.slots = slots
        self.meta_path = slots.state_dir + "/update"
        self.size = 0
        self.digest = b""
        self.slot = None

    def _read_meta(self):
        try:
            with open(self.meta_path, "rb") as f:
                data = f.read(64)
        except OSError:
            return None
        if len(data) != 37:
            return None
        return data[0], int.from_bytes(data[1:5], "little"), data[5:37]

    def pending(self):
        """(size, digest, next offset) of a download interrupted by a reboot, or None."""
        meta = self._read_meta()
        st = self.slots.read_state()
        if meta is None or st is None or meta[0] != st.candidate or st.mode == _slots.TESTING:
            return None
        slot, size, digest = meta
        self.slot, self.size, self.digest = slot, size, digest
        return size, digest, min(self.slots.slot_bytes(slot), size)

    def offer(self, size, digest):
        """Accept an offer (image size, SHA-256 of the image file); return the offset to send from.

        The same offer again (after a reboot, a lost message) resumes where the slot file ends.
        """
        if size <= 0 or size > self.slots.slot_size:
            raise UpdateError(image.OVERSIZED, "%d bytes" % size)
        if len(digest) != 32:
            raise UpdateError("bad_offer", "digest length")
        st = self.slots.read_state()
        if st is None:
            raise UpdateError("no_state", "boot once first")
        meta = self._read_meta()
        self.slot = st.candidate
        self.size = size
        self.digest = bytes(digest)
        path = self.slots.slot_path(self.slot)
        if meta is not None and meta == (self.slot, size, self.digest) and st.mode != _slots.TESTING:
            return min(self.slots.slot_bytes(self.slot), size)
        self.slots.ensure_dirs()
        try:
            st = self.slots.release_candidate()  # never overwrite a slot the boot state points at
        except _slots.StateError as e:
            raise UpdateError("busy", str(e))
        try:
            os.remove(self.meta_path)
        except OSError:
            pass
        with open(path, "wb"):
            pass  # empty the slot first, then record the offer
        tmp = self.meta_path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(bytes([self.slot]) + size.to_bytes(4, "little") + self.digest)
        os.rename(tmp, self.meta_path)
        return 0

    def write(self, offset, data):
        """Write a chunk at `offset`; returns the offset of the next byte wanted.

        A chunk that does not start where the slot file ends is not written; the returned offset
        tells the sender where to resume (duplicates and gaps are harmless).
        """
        if self.slot is None:
            raise UpdateError("no_offer")
        have = self.slots.slot_bytes(self.slot)
        if offset != have:
            return have
        if have + len(data) > self.size:
            raise UpdateError(image.OVERSIZED, "chunk past the offered size")
        with open(self.slots.slot_path(self.slot), "ab") as f:
            f.write(data)
        return have + len(data)

    def finish(self):
        """Check the whole image (offer digest, then the boot part's verifier) and mark it for
        test. Returns the ImageInfo; raises UpdateError (the download is dropped) or image.Rejected."""
        if self.slot is None:
            raise UpdateError("no_offer")
        have = self.slots.slot_bytes(self.slot)
        if have != self.size:
            raise UpdateError("incomplete", "%d of %d bytes" % (have, self.size))
        # Streamed from the slot file: the running image is in RAM already, a second copy of an
        # image would not fit beside it on a board (docs/boot.md, "Memory").
        path = self.slots.slot_path(self.slot)
        try:
            if image.file_sha256(path) != self.digest:
                raise image.Rejected(image.HASH_MISMATCH, "image differs from the offer")
            st = self.slots.read_state()
            info = image.verify_file(path, self.slots.keys, st.floor, self.slots.slot_size)
            if info.digest in self.slots.failed(st):
                # An image that failed its trial: installing it again would loop for ever.
                raise image.Rejected(REVERTED_BEFORE, "this image failed its trial before")
            self.slots.mark_pending(self.slot, info)  # verified just above: once is enough
        except image.Rejected:
            self.abandon()
            raise
        try:
            os.remove(self.meta_path)
        except OSError:
            pass
        return info

    def abandon(self):
        """Drop the download: the next offer starts from zero."""
        try:
            os.remove(self.meta_path)
        except OSError:
            pass
        if self.slot is not None:
            with open(self.slots.slot_path(self.slot), "wb"):
                pass
