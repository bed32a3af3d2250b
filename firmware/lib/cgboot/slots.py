# Slots A and B (files on littlefs) and the boot state, persisted so no interrupted write corrupts it.
#
# The state is one small record. It is written to two files in turn (state/boot.0, state/boot.1):
# record number s goes to boot.(s % 2), so a write only ever touches the file that does NOT hold
# the newest good record. Each record ends with the SHA-256 of its contents; on reading, the valid
# record with the highest sequence number wins. A power cut or a torn write during a state write
# therefore leaves either the new record or the previous one, never a mixture (docs/boot.md).
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
MODE_NAMES = ("confirmed", "pending", "testing", "reverted")
SLOT_NAMES = ("a", "b")

_MAGIC = b"CGBS"
_FMT = "<4sIBBBBI32s16s"  # magic seq active mode attempts pad floor digest reason
_LEN = struct.calcsize(_FMT)


class StateError(Exception):
    """A request the boot state does not allow (e.g. writing the slot under test)."""


class BootState:
    def __init__(self, seq=0, active=0, mode=CONFIRMED, attempts=0, floor=0, digest=b"", reason=""):
        self.seq = seq
        self.active = active  # 0 = slot a, 1 = slot b: the slot that runs when nothing is on trial
        self.mode = mode
        self.attempts = attempts  # trial boots so far (TESTING)
        self.floor = floor  # anti-rollback: lowest security counter allowed to boot
        self.digest = digest  # SHA-256 TLV of the candidate (PENDING/TESTING)
        self.reason = reason  # why the last trial was reverted (REVERTED); a reported failure (TESTING)

    @property
    def candidate(self):
        return 1 - self.active

    def copy(self, **changes):
        s = BootState(self.seq, self.active, self.mode, self.attempts, self.floor, self.digest, self.reason)
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
        )
        return body + hashlib.sha256(body).digest()

    @classmethod
    def unpack(cls, data):
        if len(data) != _LEN + 32 or hashlib.sha256(data[:_LEN]).digest() != data[_LEN:]:
            return None
        magic, seq, active, mode, attempts, _, floor, digest, reason = struct.unpack(_FMT, data[:_LEN])
        if magic != _MAGIC or active > 1 or mode > REVERTED:
            return None
        return cls(seq, active, mode, attempts, floor, digest, reason.rstrip(b"\x00").decode())

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
        with open(self.slot_path(slot), "rb") as f:
            return f.read(n)

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
        return image.verify_file(self.slot_path(slot), self.keys, floor, self.slot_size)

    # -- state ------------------------------------------------------------------------------
    def _state_path(self, i):
        return _join(self.state_dir, "boot.%d" % i)

    def read_state(self):
        """The newest valid BootState, or None on a device that never had one."""
        best = None
        for i in (0, 1):
            try:
                with open(self._state_path(i), "rb") as f:
                    s = BootState.unpack(f.read(_LEN + 33))
            except OSError:
                s = None
            if s is not None and (best is None or s.seq > best.seq):
                best = s
        return best

    def write_state(self, state):
        """Persist `state` as the next record (seq + 1), into the file not holding the current one."""
        self.ensure_dirs()
        current = self.read_state()
        state.seq = (current.seq + 1) if current is not None else 1
        with open(self._state_path(state.seq % 2), "wb") as f:
            f.write(state.pack())
        return state

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
            st.copy(active=st.candidate, mode=CONFIRMED, attempts=0, floor=max(st.floor, counter), reason="")
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
