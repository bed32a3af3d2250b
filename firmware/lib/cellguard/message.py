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
FLAG_CONTROL = const(0x10)
DEFAULT_TAG = {ENCRYPT: 8, SIGN: 16}
CCM_TAGS = (8, 12, 16)
FAIL_PERSIST_EVERY = const(16)
FAIL_LIMIT = const(4096)  # protocol.md section 9: failed downlink verifications before the key epoch moves


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


class Refused(MessageError):
    """A downlink whose header no hub sends: a key id, C = 1, U = 1, or a mode this device does not
    use (protocol.md section 1). Refused before the tag is checked: not a forgery attempt."""


class ForgeryLimit(MessageError):
    """Kept for callers of older releases: the limit now moves the key epoch instead (move_epoch)."""


Malformed = wire.Malformed


def direction_keys(derive, direction, epoch=0):
    """The CCM key, CCM IV and HMAC key of one direction ("up" or "down") in a key epoch -- protocol.md
    section 3: epoch 0 has the plain labels, epoch e > 0 appends " e<e>"."""
    p = b"cg " + direction.encode() + b" "
    s = b" e%d" % epoch if epoch else b""
    return derive(p + b"ccm key" + s, 16), derive(p + b"ccm iv" + s, 13), derive(p + b"hmac key" + s, 32)


class _Keys:
    def __init__(self, derive, direction, ccm_tag, hmac_tag, epoch=0):
        ccm_key, self.iv, mac_key = direction_keys(derive, direction, epoch)
        self.ccm = crypto.AesCcm(ccm_key, tag_len=ccm_tag)
        self.enc = self.ccm._enc
        # for crypto.seal_ccm: IV then nonce in st, MAC state x, counter block a
        self.st = bytearray(26)
        self.st[:13] = self.iv
        self.x = bytearray(16)
        self.a = bytearray(16)
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
        if ccm_tag not in CCM_TAGS:  # protocol.md section 1; CCM itself would take 4..16
            raise ValueError("CCM tag must be 8, 12 or 16 bytes")
        recv = "down" if send == "up" else "up"
        self._derive, self._send, self._recv, self._tags = derive, send, recv, (ccm_tag, hmac_tag)
        self._state_dir = state_dir
        self.epoch = self.confirmed = 0
        self.reseal_pending = False  # the epoch moved: datagrams sealed before it must be sealed again
        if state_dir is not None:
            self._load_epoch()
        self._tx = _Keys(derive, send, ccm_tag, hmac_tag, self.epoch)
        self._rx = _Keys(derive, recv, ccm_tag, hmac_tag, self.epoch)
        self.counter = counter
        self.key_id = key_id
        self.mode = mode
        self.unlocked = unlocked
        self.window = replay.ReplayWindow(window)
        # The hub answers in the mode of the datagram it answers: the current mode, and any mode a
        # datagram still in flight was sealed in (set_mode, accept_mode).
        self._rx_modes = [mode]
        self._rx_down = recv == "down"
        self.fail_limit = fail_limit
        self.failures = 0
        self.last_seq = -1
        # Header pieces fixed for this channel, and a view per header length, so sealing allocates
        # nothing (protocol.md section 1).
        kc = wire.kid_code(key_id)
        self._kid = key_id or 0
        self._kl = (0, 2, 3, 4)[kc]
        self._hdr = bytearray(9)
        self._set_flags()
        if state_dir is not None:
            self._load_state()

    def _set_flags(self):
        k = self._tx  # the hot path reads these from the channel itself
        self._encrypt = self.mode == ENCRYPT
        self._enc, self._x, self._a, self._st, self._tag_len = k.enc, k.x, k.a, k.st, k.ccm.tag_len
        f = wire.kid_code(self.key_id) << 2
        if self.mode == ENCRYPT:
            f |= wire.FLAG_ENCRYPT
        if self.unlocked:
            f |= wire.FLAG_UNLOCKED
        self._flags = f

    def set_mode(self, mode, unlocked=None):
        self.mode = mode
        self.accept_mode(mode)
        if unlocked is not None:
            self.unlocked = unlocked
        self._set_flags()

    def accept_mode(self, mode):
        if mode not in self._rx_modes:
            self._rx_modes.append(mode)

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

    def _load_epoch(self):
        # "E C" or "E C R": the key epoch, the last epoch a downlink verified in (the hub is known to
        # be there), and R while datagrams sealed in the epoch before still wait to be sealed again
        # (a power cut in the middle of move_epoch's re-sealing).
        try:
            f = atomic.read_bytes(self._path("msg_epoch")).split()
            self.epoch = int(f[0])
            self.confirmed = int(f[1]) if len(f) > 1 and f[1] != b"R" else self.epoch
            self.reseal_pending = f[-1] == b"R"
        except (OSError, ValueError, IndexError):
            self.epoch = self.confirmed = 0

    def _save_epoch(self):
        if self._state_dir is not None:
            atomic.write_atomic(
                self._path("msg_epoch"), b"%d %d%s" % (self.epoch, self.confirmed, b" R" if self.reseal_pending else b"")
            )

    def move_epoch(self):
        """Move both directions to the next key epoch, derived from the same root key (protocol.md
        section 9): after the downlink forgery limit, or when the hub asks (EPOCH record). The epoch
        is on flash before any key of it is used; sequence numbers and the window carry on."""
        self.epoch += 1
        self.reseal_pending = True
        self.failures = 0
        self._save_epoch()
        if self._state_dir is not None:
            atomic.write_atomic(self._path("msg_fail"), b"0")
        ccm_tag, hmac_tag = self._tags
        self._tx = _Keys(self._derive, self._send, ccm_tag, hmac_tag, self.epoch)
        self._rx = _Keys(self._derive, self._recv, ccm_tag, hmac_tag, self.epoch)
        self._set_flags()

    def reseal_into(self, data, out):
        """A datagram this end sealed in the epoch before, sealed again in the current one under the
        same sequence number, into `out`; returns its length (0: it verifies under neither). One that
        already verifies under the current epoch is copied as it is."""
        flags, _kid, seq, hlen = wire.parse_header(data)
        ccm_tag, hmac_tag = self._tags
        for keys in (self._tx, _Keys(self._derive, self._send, ccm_tag, hmac_tag, self.epoch - 1)):
            payload = self._open_with(keys, data, flags, seq, hlen)
            if payload is None:
                continue
            if keys is self._tx:
                n = len(data)
                out[:n] = data
                return n
            return self.seal_into(payload, out, bool(flags & FLAG_CONTROL), seq)
        return 0

    def reseal_done(self):
        self.reseal_pending = False
        self._save_epoch()

    def _open_with(self, k, data, flags, seq, hlen):
        # The payload if the tag verifies under keys k, else None.
        n = len(data)
        if flags & wire.FLAG_ENCRYPT:
            if n < hlen + k.ccm.tag_len:
                return None
            mv = memoryview(data)
            out = bytearray(n - hlen - k.ccm.tag_len)
            try:
                k.ccm.open_into(k.make_nonce(seq), mv[:hlen], mv[hlen:], out)
            except crypto.TagMismatch:
                return None
            return bytes(out)
        if n < hlen + k.hmac_tag:
            return None
        tag = k.mac.digest(memoryview(data)[: n - k.hmac_tag])
        if not crypto.ct_equal(memoryview(tag)[: k.hmac_tag], memoryview(data)[n - k.hmac_tag :]):
            return None
        return bytes(data[hlen : n - k.hmac_tag])

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
        if seq > 0xFFFFFFFF:
            raise ValueError("sequence out of range")
        self.last_seq = seq
        b0 = self._flags | FLAG_CONTROL if control else self._flags
        if self._encrypt:
            # One native call: header, nonce, CBC-MAC and CTR (crypto.seal_ccm).
            return crypto.seal_ccm(
                self._enc, self._x, self._a, self._st, b0, self._kid, self._kl, seq, 0, payload, len(payload),
                out, self._tag_len,
            )
        k = self._tx
        sl = wire.uint_len(seq)
        hl = crypto.header_nonce(self._hdr, out, b0 | (sl - 1), self._kid, self._kl, seq, sl, k.iv, k.nonce)
        n = len(payload)
        out[hl : hl + n] = payload
        tag = k.mac.digest(memoryview(out)[: hl + n])
        out[hl + n : hl + n + k.hmac_tag] = tag[: k.hmac_tag]
        return hl + n + k.hmac_tag

    def seal(self, payload, control=False):
        out = bytearray(len(payload) + 40)
        n = self.seal_into(payload, out, control)
        return bytes(out[:n])

    # ---- opening ---------------------------------------------------------------------------------
    def open(self, data):
        """Verify, replay-check and decrypt one datagram -> (flags, seq, payload bytes).

        Raises Malformed, Refused, BadTag or Replayed; the window moves only on success. The
        fail_limit-th BadTag moves the key epoch (move_epoch): nothing ever locks the device out.
        """
        flags, kid, seq, hlen = wire.parse_header(data)
        if self._rx_down:
            if kid is not None or flags & (wire.FLAG_CONTROL | wire.FLAG_UNLOCKED):
                raise Refused("downlink header not allowed")
            if (ENCRYPT if flags & wire.FLAG_ENCRYPT else SIGN) not in self._rx_modes:
                raise Refused("downlink mode not used")
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
        if self.confirmed != self.epoch and self._rx_down:
            self.confirmed = self.epoch  # the hub answers in this epoch: it may move on from here
            self._save_epoch()
        verdict = self.window.check(seq)
        if verdict != replay.NEW:
            raise Replayed(seq, verdict == replay.DUPLICATE, payload)
        self.window.update(seq)
        return flags, seq, payload

    def _failed(self):
        self.failures += 1
        if self.failures >= self.fail_limit:
            if self.epoch == self.confirmed:
                self.move_epoch()  # the next uplink, sealed in the new epoch, tells the hub
            else:
                # Never more than one epoch ahead of the last one the hub answered in (the hub tries
                # only its own and the next): count afresh in this one instead of moving on.
                self.failures = 0
                if self._state_dir is not None:
                    atomic.write_atomic(self._path("msg_fail"), b"0")
        elif self._state_dir is not None and self.failures % FAIL_PERSIST_EVERY == 0:
            atomic.write_atomic(self._path("msg_fail"), b"%d" % self.failures)
