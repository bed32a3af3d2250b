# Per-message security (docs/protocol.md): seal and open single datagrams.
#
# A Channel is one end of one device's link. On the device it sends "up" and receives "down"; a
# test (or a firmware-side hub) builds the mirror image with send="down". Sealing writes into a
# caller's buffer and, in encrypt mode, allocates nothing. Opening verifies the tag first and only
# then consults and updates the replay window, so forged datagrams cannot move it.
from cellguard import atomic, crypto, replay, wire

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


ENCRYPT = const(1)
SIGN = const(0)
NONCE_LEN = const(13)
DEFAULT_TAG = {ENCRYPT: 8, SIGN: 16}
FAIL_PERSIST_EVERY = const(16)
FAIL_LIMIT = const(4096)  # protocol.md section 9: failed downlink verifications before lock-out


class MessageError(Exception):
    pass


class BadTag(MessageError):
    """Forged or corrupted: the tag did not verify."""


class Replayed(MessageError):
    """Authentic but already seen (duplicate) or older than the window."""

    def __init__(self, seq, duplicate, payload=None):
        super().__init__("duplicate" if duplicate else "too old")
        self.seq = seq
        self.duplicate = duplicate
        self.payload = payload  # verified plaintext (the outbox answers resent commands again)


class ForgeryLimit(MessageError):
    """Too many failed verifications on this key: nothing more is accepted until re-keyed."""


Malformed = wire.Malformed


def direction_keys(derive, direction):
    """The CCM key, CCM IV and HMAC key of one direction ("up" or "down") -- protocol.md section 3."""
    p = b"cg " + direction.encode() + b" "
    return derive(p + b"ccm key", 16), derive(p + b"ccm iv", 13), derive(p + b"hmac key", 32)


class _Keys:
    def __init__(self, derive, direction, ccm_tag, hmac_tag):
        ccm_key, self.iv, mac_key = direction_keys(derive, direction)
        self.ccm = crypto.AesCcm(ccm_key, tag_len=ccm_tag)
        self.mac = crypto.HmacSha256(mac_key)
        self.hmac_tag = hmac_tag
        self.nonce = bytearray(NONCE_LEN)

    def make_nonce(self, seq):
        n = self.nonce
        iv = self.iv
        for i in range(8):
            n[i] = iv[i]
        for i in range(12, 7, -1):
            n[i] = iv[i] ^ (seq & 0xFF)
            seq >>= 8
        return n


class Channel:
    """One end of a device link.

    derive:   keys.derive (or any label, length -> bytes function over the same root key)
    counter:  a seqstore.SequenceCounter for this end's sending direction
    key_id:   put in sent headers (the device's key id); None for the hub -> device direction
    send:     "up" on the device, "down" on a hub
    state_dir: where the receive window and failure counter persist (None: memory only)
    """

    def __init__(
        self,
        derive,
        counter,
        key_id=None,
        mode=ENCRYPT,
        send="up",
        ccm_tag=8,
        hmac_tag=16,
        unlocked=False,
        window=32,
        state_dir=None,
        fail_limit=FAIL_LIMIT,
    ):
        if hmac_tag < 10 or hmac_tag > 32:
            raise ValueError("HMAC tag must be 10..32 bytes")
        recv = "down" if send == "up" else "up"
        self._tx = _Keys(derive, send, ccm_tag, hmac_tag)
        self._rx = _Keys(derive, recv, ccm_tag, hmac_tag)
        self.counter = counter
        self.key_id = key_id
        self.mode = mode
        self.unlocked = unlocked
        self.window = replay.ReplayWindow(window)
        self._state_dir = state_dir
        self.fail_limit = fail_limit
        self.failures = 0
        self.last_seq = -1
        if state_dir is not None:
            self._load_state()

    # ---- persistence of the receive side ------------------------------------------------------
    def _path(self, name):
        return self._state_dir + "/" + name

    def _load_state(self):
        try:
            self.window = replay.ReplayWindow.from_bytes(atomic.read_bytes(self._path("msg_rx")), self.window.size)
        except (OSError, ValueError):
            pass
        try:
            self.failures = int(atomic.read_bytes(self._path("msg_fail")))
        except (OSError, ValueError):
            self.failures = 0

    def persist_window(self):
        """Write the receive window (after executing commands: protocol.md section 7)."""
        if self._state_dir is not None:
            atomic.write_atomic(self._path("msg_rx"), self.window.to_bytes())

    # ---- sealing --------------------------------------------------------------------------------
    def overhead(self, seq=0):
        tag = self._tx.ccm.tag_len if self.mode == ENCRYPT else self._tx.hmac_tag
        kc = wire.kid_code(self.key_id)
        return 1 + (0, 2, 3, 4)[kc] + wire.uint_len(seq) + tag

    def seal_into(self, payload, out, control=False, seq=None):
        """Seal `payload` under the next sequence number into `out`; return the datagram length."""
        if seq is None:
            seq = self.counter.next()
        self.last_seq = seq
        flags = 0
        if self.mode == ENCRYPT:
            flags |= wire.FLAG_ENCRYPT
        if self.unlocked:
            flags |= wire.FLAG_UNLOCKED
        if control:
            flags |= wire.FLAG_CONTROL
        hlen = wire.write_header(out, flags, self.key_id, seq)
        k = self._tx
        if self.mode == ENCRYPT:
            hdr = memoryview(out)[:hlen]
            return hlen + k.ccm.seal_into(k.make_nonce(seq), hdr, payload, out, hlen)
        n = len(payload)
        out[hlen : hlen + n] = payload
        tag = k.mac.digest(memoryview(out)[: hlen + n])
        out[hlen + n : hlen + n + k.hmac_tag] = tag[: k.hmac_tag]
        return hlen + n + k.hmac_tag

    def seal(self, payload, control=False):
        out = bytearray(len(payload) + 40)
        n = self.seal_into(payload, out, control)
        return bytes(out[:n])

    # ---- opening ---------------------------------------------------------------------------------
    def open(self, data):
        """Verify, replay-check and decrypt one datagram -> (flags, seq, payload bytes).

        Raises Malformed, BadTag, Replayed or ForgeryLimit; the window moves only on success.
        """
        if self.failures >= self.fail_limit:
            raise ForgeryLimit("failed-verification limit reached")
        flags, _kid, seq, hlen = wire.parse_header(data)
        k = self._rx
        n = len(data)
        if flags & wire.FLAG_ENCRYPT:
            if n < hlen + k.ccm.tag_len:
                raise Malformed("truncated")
            mv = memoryview(data)
            out = bytearray(n - hlen - k.ccm.tag_len)
            try:
                k.ccm.open_into(k.make_nonce(seq), mv[:hlen], mv[hlen:], out)
            except crypto.TagMismatch:
                self._failed()
                raise BadTag("bad tag")
            payload = bytes(out)
        else:
            if n < hlen + k.hmac_tag:
                raise Malformed("truncated")
            tag = k.mac.digest(memoryview(data)[: n - k.hmac_tag])
            if not crypto.ct_equal(memoryview(tag)[: k.hmac_tag], memoryview(data)[n - k.hmac_tag :]):
                self._failed()
                raise BadTag("bad tag")
            payload = bytes(data[hlen : n - k.hmac_tag])
        verdict = self.window.check(seq)
        if verdict != replay.NEW:
            raise Replayed(seq, verdict == replay.DUPLICATE, payload)
        self.window.update(seq)
        return flags, seq, payload

    def _failed(self):
        self.failures += 1
        if self._state_dir is not None and self.failures % FAIL_PERSIST_EVERY == 0:
            atomic.write_atomic(self._path("msg_fail"), b"%d" % self.failures)
