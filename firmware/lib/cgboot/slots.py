# Slots A and B (files on littlefs) and the boot state, persisted so no interrupted write corrupts it.
#
# The state is one small record. It is written to two files in turn (state/boot.0, state/boot.1):
# record number s goes to boot.(s % 2), so a write only ever touches the file that does NOT hold
# the newest good record. Each record ends with the SHA-256 of its contents; on reading, the valid
# record with the highest sequence number wins. A power cut or a torn write during a state write
# therefore leaves either the new record or the previous one, never a mixture (docs/boot.md). The
# same two records survive flash that decays between writes: a flipped bit in one record leaves the
# other, one state older, with the anti-rollback floor it had.
#
# Two small files beside them survive damage to both records: state/provision (written once, at the
# factory boot: tells a unit whose records are damaged from a factory-fresh one, and holds the
# factory floor, which damage can never raise) and state/failed (the digests of images whose trial
# failed, so that no damage makes one of them the confirmed image).
import hashlib
import struct

from cgboot import image

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


DEFAULT_SLOT_SIZE = const(128 * 1024)  # keep equal to cellguard image DEFAULT_SLOT_SIZE
DEFAULT_MAX_ATTEMPTS = const(3)

# Modes (docs/boot.md has the table).
CONFIRMED = const(0)  # the active slot runs; nothing pending
PENDING = const(1)  # the inactive slot holds a verified candidate to trial-boot at the next boot
TESTING = const(2)  # the candidate is on trial (attempts so far); confirm() makes it permanent
REVERTED = const(3)  # a trial failed; the active slot runs again; reason says why
RESCUE = const(4)  # the active slot holds an image that failed its trial: nothing else verifies
MODE_NAMES = ("confirmed", "pending", "testing", "reverted", "rescue")
SLOT_NAMES = ("a", "b")

_MAGIC = b"CGBS"
_FMT = "<4sIBBBBI32s16s32s"  # magic seq active mode attempts pad floor digest reason confirmed
_LEN = struct.calcsize(_FMT)
_OLD_LEN = const(64)  # a record written before `confirmed` was added: read as one without it
_PROVISION = b"CGBP"  # state/provision: magic, factory floor (u32), SHA-256
_FAILED = b"CGBF"  # state/failed: magic, digests of failed images (newest first), SHA-256
FAILED_MAX = const(4)


INVALID_IMAGE = "invalid image"  # a revert because the candidate no longer verified (16 bytes at most)


class StateError(Exception):
    """A request the boot state does not allow (e.g. writing the slot under test)."""


class BootState:
    def __init__(self, seq=0, active=0, mode=CONFIRMED, attempts=0, floor=0, digest=b"", reason="", confirmed=b""):
        self.seq = seq
        self.active = active  # 0 = slot a, 1 = slot b: the slot that runs when nothing is on trial
        self.mode = mode
        self.attempts = attempts  # trial boots so far (TESTING)
        self.floor = floor  # anti-rollback: lowest security counter allowed to boot
        self.digest = digest  # SHA-256 TLV of the candidate (PENDING/TESTING)
        self.reason = reason  # why the last trial was reverted (REVERTED); a reported failure (TESTING)
        self.confirmed = confirmed  # SHA-256 TLV of the image last confirmed (in the candidate slot in RESCUE)

    @property
    def candidate(self):
        return 1 - self.active

    def copy(self, **changes):
        s = BootState(
            self.seq, self.active, self.mode, self.attempts, self.floor, self.digest, self.reason, self.confirmed
        )
        for k in changes:
            setattr(s, k, changes[k])
        return s

    def pack(self):
        body = struct.pack(
            _FMT,
            _MAGIC,
            self.seq,
            self.active,
            self.mode,
            min(self.attempts, 255),
            0,
            self.floor,
            (self.digest + bytes(32))[:32],
            self.reason.encode()[:16],
            (self.confirmed + bytes(32))[:32],
        )
        return body + hashlib.sha256(body).digest()

    @classmethod
    def unpack(cls, data):
        n = len(data) - 32
        if n not in (_LEN, _OLD_LEN) or hashlib.sha256(data[:n]).digest() != data[n:]:
            return None
        fields = struct.unpack(_FMT, data[:n] + bytes(_LEN - n))
        magic, seq, active, mode, attempts, _, floor, digest, reason, confirmed = fields
        if magic != _MAGIC or active > 1 or mode > RESCUE:
            return None
        return cls(seq, active, mode, attempts, floor, digest, reason.rstrip(b"\x00").decode(), confirmed)

    def describe(self):
        return {
            "seq": self.seq,
            "active": SLOT_NAMES[self.active],
            "mode": MODE_NAMES[self.mode],
            "attempts": self.attempts,
            "floor": self.floor,
            "reason": self.reason,
        }


def _join(a, b):
    return a + b if a.endswith("/") else a + "/" + b


def _mkdir(path):
    import os

    try:
        os.mkdir(path)
    except OSError:
        pass  # exists


class Slots:
    """The two slots and the boot state under `root` (runtime.fs_root() on a device)."""

    def __init__(self, root, trusted_keys, slot_size=DEFAULT_SLOT_SIZE, max_attempts=DEFAULT_MAX_ATTEMPTS):
        self.root = root
        self.keys = trusted_keys
        self.slot_size = slot_size
        self.max_attempts = max_attempts
        self.slot_dir = _join(root, "slots")
        self.state_dir = _join(root, "state")

    def ensure_dirs(self):
        """Create slots/ and state/ (only writers call this: booting creates nothing)."""
        _mkdir(self.slot_dir)
        _mkdir(self.state_dir)

    # -- slots ------------------------------------------------------------------------------
    def slot_path(self, slot):
        return _join(self.slot_dir, SLOT_NAMES[slot] + ".img")

    def slot_bytes(self, slot):
        """How many bytes the slot file holds (0 if there is none)."""
        import os

        try:
            return os.stat(self.slot_path(slot))[6]
        except OSError:
            return 0

    def read_slot(self, slot):
        """The slot's bytes (immutable: what is verified is what runs), or None if empty.

        A file larger than the slot is never read into memory: it is rejected as oversized."""
        n = self.slot_bytes(slot)
        if n == 0:
            return None
        if n > self.slot_size:
            raise image.Rejected(image.OVERSIZED, "%d > slot %d" % (n, self.slot_size))
        try:
            with open(self.slot_path(slot), "rb") as f:
                return f.read(n)
        except OSError as e:  # EIO from the flash: this slot cannot run, the other may
            raise image.Rejected(image.READ_ERROR, repr(e))

    def verify_slot(self, slot, floor=0):
        """(buffer, ImageInfo) of a slot that verifies; raises image.Rejected otherwise. For the
        image that is to run: the buffer verified is the buffer mounted."""
        buf = self.read_slot(slot)
        if not buf:
            raise image.Rejected(image.TRUNCATED, "slot %s empty" % SLOT_NAMES[slot])
        return buf, image.verify(buf, self.keys, floor, self.slot_size)

    def check_slot(self, slot, floor=0):
        """ImageInfo of a slot that verifies, streamed from its file (a few KiB of RAM, however big
        the image: the running image's buffer is already in RAM); raises image.Rejected otherwise.
        For a slot that is not run from this check: a candidate, the first boot's choice."""
        if self.slot_bytes(slot) == 0:
            raise image.Rejected(image.TRUNCATED, "slot %s empty" % SLOT_NAMES[slot])
        try:
            return image.verify_file(self.slot_path(slot), self.keys, floor, self.slot_size)
        except OSError as e:
            raise image.Rejected(image.READ_ERROR, repr(e))

    # -- state ------------------------------------------------------------------------------
    def _state_path(self, name):
        return _join(self.state_dir, name)

    def _read(self, name, n):
        try:
            with open(self._state_path(name), "rb") as f:
                return f.read(n)
        except OSError:
            return None

    def read_state(self):
        """The newest valid BootState, or None (factory-fresh, or both records damaged: fresh())."""
        best = None
        for i in (0, 1):
            data = self._read("boot.%d" % i, _LEN + 33)
            s = BootState.unpack(data) if data else None
            if s is not None and (best is None or s.seq > best.seq):
                best = s
        return best

    def write_state(self, state):
        """Persist `state` as the next record (seq + 1), into the file not holding the current one."""
        self.ensure_dirs()
        current = self.read_state()
        state.seq = (current.seq + 1) if current is not None else 1
        with open(self._state_path("boot.%d" % (state.seq % 2)), "wb") as f:
            f.write(state.pack())
        return state

    def _exists(self, name):
        import os

        try:
            os.stat(self._state_path(name))
            return True
        except OSError:
            return False

    def provisioned(self):
        """True once the provision record was written (damaged or not: only its floor needs it whole)."""
        return self._exists("provision")

    def fresh(self):
        """True on a factory-fresh unit: no state record and no provision record, valid or not."""
        return not (self.provisioned() or self._exists("boot.0") or self._exists("boot.1"))

    def _write_sealed(self, name, magic, body):
        # magic + body + SHA-256, written to a temporary file and renamed: old or new, never half.
        import os

        self.ensure_dirs()
        data = magic + body
        tmp = self._state_path(name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data + hashlib.sha256(data).digest())
        os.rename(tmp, self._state_path(name))

    def _read_sealed(self, name, magic, n):
        data = self._read(name, n + 1)
        if not data or len(data) < 36 or data[:4] != magic or hashlib.sha256(data[:-32]).digest() != data[-32:]:
            return None
        return data[4:-32]

    def provision_floor(self):
        """The floor written at provisioning, 0 if that record is missing or damaged (never higher
        than the real floor: floors only rise)."""
        body = self._read_sealed("provision", _PROVISION, 40)
        return struct.unpack("<I", body)[0] if body is not None and len(body) == 4 else 0

    def write_provision(self, floor):
        """Once per unit (the factory boot): the record that says it was provisioned, and its floor."""
        self._write_sealed("provision", _PROVISION, struct.pack("<I", floor))

    def failed(self, st=None):
        """Digests of the images whose trial failed: the failure journal plus the state's own record
        of the last one (`st`: a REVERTED or RESCUE state), so either survives damage to the other."""
        body = self._read_sealed("failed", _FAILED, 36 + 32 * FAILED_MAX)
        out = [body[i : i + 32] for i in range(0, len(body), 32)] if body is not None else []
        if st is not None and (st.mode == RESCUE or (st.mode == REVERTED and st.reason != INVALID_IMAGE)):
            out.append(st.digest)
        return out

    def record_failure(self, digest):
        """Add `digest` to the failure journal (the newest FAILED_MAX are kept)."""
        known = [d for d in self.failed() if d != digest]
        self._write_sealed("failed", _FAILED, b"".join([digest] + known[: FAILED_MAX - 1]))

    def revert(self, st, why):
        """The trial in `st` failed: journal the candidate (unless its slot merely did not verify: the
        same image may be sent again), then the active slot runs again."""
        if why != INVALID_IMAGE:
            self.record_failure(st.digest)
        return self.write_state(st.copy(mode=REVERTED, attempts=0, reason=why))

    # -- transitions the application may ask for ------------------------------------------------
    def mark_pending(self, slot, info=None):
        """Verify the image in `slot` (the inactive one) and schedule its trial boot. `info`: what
        the boot part's verifier has just returned for that slot (cgboot.update checks it before
        it marks), so an update is not verified twice."""
        st = self.read_state()
        if st is None:
            raise StateError("no boot state: boot once first")
        if slot != st.candidate:
            raise StateError("only the inactive slot can be marked for test")
        if st.mode == TESTING:
            raise StateError("an image is on trial: confirm it or let it revert first")
        if info is None:
            info = self.check_slot(slot, st.floor)
        return self.write_state(st.copy(mode=PENDING, attempts=0, digest=info.digest, reason=""))

    def confirm(self, counter):
        """Make the image on trial permanent and raise the anti-rollback floor to its counter."""
        st = self.read_state()
        if st is None or st.mode != TESTING:
            return st  # nothing on trial: confirming a confirmed image is harmless
        return self.write_state(
            st.copy(
                active=st.candidate,
                mode=CONFIRMED,
                attempts=0,
                floor=max(st.floor, counter),
                reason="",
                confirmed=st.digest,
            )
        )

    def release_candidate(self):
        """Before the inactive slot is overwritten: forget a pending candidate (not one on trial)."""
        st = self.read_state()
        if st is None:
            raise StateError("no boot state: boot once first")
        if st.mode == TESTING:
            raise StateError("an image is on trial: confirm it or let it revert first")
        if st.mode == PENDING:
            st = self.write_state(st.copy(mode=CONFIRMED, digest=b"", reason=""))
        return st
