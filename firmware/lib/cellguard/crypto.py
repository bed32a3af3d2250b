# Crypto primitives for cellguard, built on the platform's AES block and SHA-256 only:
# HMAC-SHA-256 (RFC 2104), HKDF-SHA-256 (RFC 5869), AES-128-CCM (RFC 3610) and a constant-time
# comparison. Runs unchanged on MicroPython, CircuitPython and CPython (where tests cross-check it
# against `cryptography`).
#
# The CCM hot path allocates nothing: every buffer is made once per key, the byte loops are viper
# code on MicroPython (cellguard._fastxor), and the AES calls are batched so CTR mode costs a single
# call to the block cipher for the whole message.
from cellguard import runtime

try:
    from cellguard._fastxor import ccm_ctr, ccm_mac, diff, fill_ctr, header_nonce, seal_ccm, xor3, xor_at

    NATIVE = True  # the byte loops are viper code
except Exception:  # CPython, or a build without the viper emitter: the same loops in Python
    # A MicroPython or CircuitPython build without a native emitter (CircuitPython's default builds,
    # the feather's RP2040 among them) fails to compile _fastxor (SyntaxError "invalid micropython
    # decorator"). Everything below runs on such a VM, not only on CPython: no CPython-only idioms
    # (host_tests run it on the unix port with _fastxor made unavailable, see no_native_emitter.py).
    NATIVE = False

    def xor_at(dst, doff, src, soff, n):
        for i in range(n):
            dst[doff + i] ^= src[soff + i]

    def xor3(dst, doff, a, aoff, b, boff, n):
        for i in range(n):
            dst[doff + i] = a[aoff + i] ^ b[boff + i]

    def fill_ctr(ks, flags, nonce, nlen, first, nblocks):
        for b in range(nblocks):
            o = b * 16
            ks[o] = flags
            ks[o + 1 : o + 1 + nlen] = nonce
            c = first + b
            ks[o + 14] = (c >> 8) & 0xFF
            ks[o + 15] = c & 0xFF

    def diff(a, aoff, b, boff, n):
        acc = 0
        for i in range(n):
            acc |= a[aoff + i] ^ b[boff + i]
        return acc

    def header_nonce(hdr, out, b0, kid, kl, seq, sl, iv, nonce):
        hdr[0] = b0
        hdr[1 : 1 + kl] = kid.to_bytes(kl, "big")
        hdr[1 + kl : 1 + kl + sl] = seq.to_bytes(sl, "big")
        hl = 1 + kl + sl
        out[:hl] = hdr[:hl]
        s = seq.to_bytes(5, "big")
        nonce[:8] = iv[:8]
        for i in range(5):
            nonce[8 + i] = iv[8 + i] ^ s[i]
        return hl

    def seal_ccm(enc, x, a, st, b0, kid, kl, seq, sl, msg, n, out, tag_len):
        # The fused datagram seal of the native version, built from the general pieces.
        if sl == 0:
            sl = 1 if seq < 0x100 else 2 if seq < 0x10000 else 3 if seq < 0x1000000 else 4
            b0 |= sl - 1
        nonce = memoryview(st)[13:26]
        hl = header_nonce(bytearray(9), out, b0, kid, kl, seq, sl, bytes(st[:13]), nonce)
        ccm = AesCcm.from_encrypt(enc, tag_len)
        return hl + ccm.seal_into(bytes(nonce), bytes(out[:hl]), msg[:n], out, hl)

    def _mac_feed(enc, x, off, src, n):
        soff = 0
        while n > 0:
            take = min(16 - off, n)
            xor_at(x, off, src, soff, take)
            off += take
            soff += take
            n -= take
            if off == 16:
                enc(x, x)
                off = 0
        if off:
            enc(x, x)

    def ccm_mac(enc, x, fn, nonce, aad, la, msg, lm, tag_len):
        nlen = fn >> 8
        x[0] = (fn & 0xFF) | (((tag_len - 2) >> 1) << 3) | (64 if la else 0)
        x[1 : 1 + nlen] = nonce
        x[1 + nlen : 16] = lm.to_bytes(15 - nlen, "big")
        enc(x, x)
        if la:
            x[0] ^= la >> 8
            x[1] ^= la & 0xFF
            _mac_feed(enc, x, 2, aad, la)
        if lm:
            _mac_feed(enc, x, 0, msg, lm)

    def ccm_ctr(enc, ks, view, fn, nonce, src, n, dst, doff, x, tag_len):
        nlen = fn >> 8
        nb = (n + 15) // 16 + 1
        for b in range(nb):
            o = b * 16
            ks[o] = fn & 0xFF
            ks[o + 1 : o + 1 + nlen] = nonce
            ks[o + 1 + nlen : o + 16] = b.to_bytes(15 - nlen, "big")
        enc(view, view)
        xor3(dst, doff, src, 0, ks, 16, n)
        if tag_len:
            xor3(dst, doff + n, ks, 0, x, 0, tag_len)


class CryptoError(Exception):
    pass


class TagMismatch(CryptoError):
    """The authentication tag did not verify: forged or corrupted data."""


def ct_equal(a, b):
    """Constant-time comparison of two byte strings (the time depends only on the length)."""
    if len(a) != len(b):
        return False
    return diff(a, 0, b, 0, len(a)) == 0


# ---- HMAC-SHA-256 -------------------------------------------------------------------------------
_BLOCK = 64


class HmacSha256:
    """HMAC-SHA-256 with the padded key blocks computed once.

    MicroPython's sha256 objects have no copy(), so the inner and outer states cannot be cloned;
    what can be precomputed is the two 64-byte key blocks.
    """

    def __init__(self, key):
        if len(key) > _BLOCK:
            key = runtime.sha256(key).digest()
        k = bytearray(_BLOCK)
        k[: len(key)] = key
        ipad = bytearray(_BLOCK)
        opad = bytearray(_BLOCK)
        for i in range(_BLOCK):
            ipad[i] = k[i] ^ 0x36
            opad[i] = k[i] ^ 0x5C
        self._ipad = bytes(ipad)
        self._opad = bytes(opad)

    def digest(self, *parts):
        """HMAC of the concatenation of `parts` (no concatenation is made)."""
        h = runtime.sha256(self._ipad)
        for p in parts:
            h.update(p)
        o = runtime.sha256(self._opad)
        o.update(h.digest())
        return o.digest()


def hmac_sha256(key, data):
    return HmacSha256(key).digest(data)


# ---- HKDF-SHA-256 -------------------------------------------------------------------------------
def hkdf_extract(salt, ikm):
    return hmac_sha256(salt if salt else bytes(32), ikm)


def hkdf_expand(prk, info, length):
    if length > 255 * 32:
        raise ValueError("HKDF output too long")
    mac = HmacSha256(prk)
    out = bytearray()
    t = b""
    i = 1
    while len(out) < length:
        t = mac.digest(t, info, bytes((i,)))
        out.extend(t)
        i += 1
    return bytes(out[:length])


def hkdf(ikm, salt, info, length):
    return hkdf_expand(hkdf_extract(salt, ikm), info, length)


# ---- AES-128-CCM --------------------------------------------------------------------------------
_NONCE_LEN = 13  # CCM L = 2: messages up to 65535 bytes, the only size cellguard uses


class AesCcm:
    """AES-CCM (RFC 3610) with a 13-byte nonce and a fixed tag length, on the platform AES block.

    seal_into / open_into write into a caller's buffer and return the length written. A message of
    up to `max_len` bytes costs two native calls and one AES call per block, and allocates nothing;
    longer ones are processed in chunks of the key-stream buffer.
    """

    def __init__(self, key, tag_len=8, max_len=256):
        self._init(runtime.aes_block(key).encrypt, tag_len, max_len)

    def _init(self, enc, tag_len, max_len):
        if tag_len not in (4, 6, 8, 10, 12, 14, 16):
            raise ValueError("CCM tag length must be even, 4..16")
        self._enc = enc
        self.tag_len = tag_len
        self._fn = (_NONCE_LEN << 8) | (15 - _NONCE_LEN - 1)
        self._x = bytearray(16)  # CBC-MAC state
        self._blocks = (max_len + 15) // 16 + 1  # A_0 plus the message's blocks
        self._ks = bytearray(16 * self._blocks)
        mv = memoryview(self._ks)
        # One view per block count, made once, so the hot path never slices.
        self._views = [mv[: 16 * i] for i in range(self._blocks + 1)]
        self._tag = bytearray(16)

    @classmethod
    def from_encrypt(cls, enc, tag_len):
        """An AesCcm over an existing AES block encryptor's encrypt(in, out)."""
        obj = object.__new__(cls)  # cls.__new__ exists only on CPython
        obj._init(enc, tag_len, 256)
        return obj

    def _check(self, nonce, aad, n):
        if len(nonce) != _NONCE_LEN:
            raise ValueError("CCM nonce must be 13 bytes")
        if len(aad) >= 0xFF00:
            raise ValueError("associated data too long")
        if n > 0xFFFF:
            raise ValueError("message too long")

    def _ctr_chunked(self, nonce, src, dst, doff, n):
        # Messages longer than the key-stream buffer: counters 1.. in chunks; S_0 left in _tag.
        t = self._tag
        fill_ctr(t, self._fn & 0xFF, nonce, _NONCE_LEN, 0, 1)
        self._enc(t, t)
        ks = self._ks
        cap = (self._blocks - 1) * 16
        ctr = 1
        soff = 0
        while n > 0:
            take = n if n <= cap else cap
            nb = (take + 15) // 16
            fill_ctr(ks, self._fn & 0xFF, nonce, _NONCE_LEN, ctr, nb)
            v = self._views[nb]
            self._enc(v, v)
            xor3(dst, doff, src, soff, ks, 0, take)
            soff += take
            doff += take
            n -= take
            ctr += nb
        return t

    def seal_into(self, nonce, aad, msg, out, out_off=0):
        """Write ciphertext || tag of `msg` into out[out_off:]; return the number of bytes written."""
        n = len(msg)
        self._check(nonce, aad, n)
        x = self._x
        ccm_mac(self._enc, x, self._fn, nonce, aad, len(aad), msg, n, self.tag_len)
        nb = (n + 15) // 16 + 1
        if nb <= self._blocks:
            ccm_ctr(self._enc, self._ks, self._views[nb], self._fn, nonce, msg, n, out, out_off, x, self.tag_len)
        else:
            s0 = self._ctr_chunked(nonce, msg, out, out_off, n)
            xor3(out, out_off + n, s0, 0, x, 0, self.tag_len)
        return n + self.tag_len

    def open_into(self, nonce, aad, data, out, out_off=0, n=None):
        """Verify and decrypt `data` (ciphertext || tag; its first `n` bytes if given) into
        out[out_off:]; return the plaintext length. Raises TagMismatch and zeroes the output."""
        if n is None:
            n = len(data)
        m = n - self.tag_len
        if m < 0:
            raise TagMismatch("shorter than the tag")
        self._check(nonce, aad, m)
        nb = (m + 15) // 16 + 1
        if nb <= self._blocks:
            ccm_ctr(self._enc, self._ks, self._views[nb], self._fn, nonce, data, m, out, out_off, self._x, 0)
            s0 = self._ks
        else:
            s0 = self._ctr_chunked(nonce, data, out, out_off, m)
        x = self._x
        plain = memoryview(out)[out_off:] if out_off else out
        ccm_mac(self._enc, x, self._fn, nonce, aad, len(aad), plain, m, self.tag_len)
        xor_at(x, 0, s0, 0, self.tag_len)
        if diff(x, 0, data, m, self.tag_len):
            for i in range(out_off, out_off + m):
                out[i] = 0
            raise TagMismatch("CCM tag mismatch")
        return m

    def seal(self, nonce, aad, msg):
        out = bytearray(len(msg) + self.tag_len)
        self.seal_into(nonce, aad, msg, out)
        return bytes(out)

    def open(self, nonce, aad, data):
        out = bytearray(max(0, len(data) - self.tag_len))
        m = self.open_into(nonce, aad, data, out)
        return bytes(out[:m])
