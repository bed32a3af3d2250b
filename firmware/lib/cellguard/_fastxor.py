# Native (viper) byte loops for the crypto hot path: MicroPython only.
#
# cellguard.crypto imports this module when the runtime has the viper emitter and falls back to
# plain Python loops otherwise (CPython, CircuitPython builds without native code). Each function
# works in place on preallocated buffers and allocates nothing.
import micropython  # noqa: I001  (viper builtins such as ptr8 exist only inside @viper code)

# ruff: noqa: F821


@micropython.viper
def xor_at(dst: ptr8, doff: int, src: ptr8, soff: int, n: int):
    # dst[doff:doff+n] ^= src[soff:soff+n]
    i = 0
    while i < n:
        dst[doff + i] ^= src[soff + i]
        i += 1


@micropython.viper
def xor3(dst: ptr8, doff: int, a: ptr8, aoff: int, b: ptr8, boff: int, n: int):
    # dst[doff:doff+n] = a[aoff:aoff+n] ^ b[boff:boff+n]
    i = 0
    while i < n:
        dst[doff + i] = a[aoff + i] ^ b[boff + i]
        i += 1


@micropython.viper
def fill_ctr(ks: ptr8, flags: int, nonce: ptr8, nlen: int, first: int, nblocks: int):
    # CCM counter blocks A_first .. A_first+nblocks-1: flags || nonce || counter (2 bytes, L = 2).
    b = 0
    while b < nblocks:
        o = b * 16
        ks[o] = flags
        i = 0
        while i < nlen:
            ks[o + 1 + i] = nonce[i]
            i += 1
        c = first + b
        ks[o + 14] = (c >> 8) & 0xFF
        ks[o + 15] = c & 0xFF
        b += 1


@micropython.viper
def diff(a: ptr8, aoff: int, b: ptr8, boff: int, n: int) -> int:
    # OR of a[i] ^ b[i]: zero when equal; time does not depend on where they differ.
    acc = 0
    i = 0
    while i < n:
        acc |= a[aoff + i] ^ b[boff + i]
        i += 1
    return acc


@micropython.viper
def ccm_mac(enc, xo, fn: int, nonce, aad, la: int, msg, lm: int, tag_len: int):
    # CBC-MAC of CCM (RFC 3610 2.2) into the 16-byte buffer xo: B_0, then the encoded AAD, then the
    # message, each zero padded. fn = (nonce length << 8) | (L - 1). Zero padding is the same as
    # XORing fewer bytes, so nothing is copied. enc is the AES block's encrypt(in, out).
    x = ptr8(xo)
    nn = ptr8(nonce)
    nlen = fn >> 8
    x[0] = (fn & 0xFF) | (((tag_len - 2) >> 1) << 3) | (64 if la > 0 else 0)
    i = 0
    while i < nlen:
        x[1 + i] = nn[i]
        i += 1
    q = lm
    j = 15
    while j > nlen:
        x[j] = q & 0xFF
        q = q >> 8
        j -= 1
    enc(xo, xo)
    if la > 0:
        a = ptr8(aad)
        x[0] ^= (la >> 8) & 0xFF
        x[1] ^= la & 0xFF
        off = 2
        i = 0
        while i < la:
            x[off] ^= a[i]
            off += 1
            i += 1
            if off == 16:
                enc(xo, xo)
                off = 0
        if off != 0:
            enc(xo, xo)
    if lm > 0:
        m = ptr8(msg)
        off = 0
        i = 0
        while i < lm:
            x[off] ^= m[i]
            off += 1
            i += 1
            if off == 16:
                enc(xo, xo)
                off = 0
        if off != 0:
            enc(xo, xo)


@micropython.viper
def ccm_ctr(enc, kso, view, fn: int, nonce, src, n: int, dsto, doff: int, xo, tag_len: int):
    # CTR of CCM for a message that fits the key-stream buffer: counter blocks A_0..A_k built in kso,
    # encrypted with one call (view = the memoryview of exactly those blocks), dst = src ^ S_1...
    # S_0 stays in kso[0:16]. With tag_len > 0 the tag S_0 ^ X (X = CBC-MAC in xo) is written after
    # the ciphertext.
    ks = ptr8(kso)
    nn = ptr8(nonce)
    nlen = fn >> 8
    flags = fn & 0xFF
    nb = ((n + 15) >> 4) + 1
    b = 0
    while b < nb:
        o = b << 4
        ks[o] = flags
        i = 0
        while i < nlen:
            ks[o + 1 + i] = nn[i]
            i += 1
        j = 15
        c = b
        while j > nlen:
            ks[o + j] = c & 0xFF
            c = c >> 8
            j -= 1
        b += 1
    enc(view, view)
    s = ptr8(src)
    d = ptr8(dsto)
    i = 0
    while i < n:
        d[doff + i] = s[i] ^ ks[16 + i]
        i += 1
    if tag_len > 0:
        x = ptr8(xo)
        i = 0
        while i < tag_len:
            d[doff + n + i] = ks[i] ^ x[i]
            i += 1


@micropython.viper
def header_nonce(hdr, out, b0: int, kid: uint, kl: int, seq: uint, sl: int, iv, nonce) -> int:
    # The datagram header (protocol.md section 1) into both hdr and out, and the CCM nonce
    # IV XOR (0^8 || seq as 5 bytes) into nonce. Returns the header length.
    h = ptr8(hdr)
    o = ptr8(out)
    v = ptr8(iv)
    n = ptr8(nonce)
    h[0] = b0
    i = kl
    k = kid
    while i > 0:
        h[i] = k & 0xFF
        k = k >> 8
        i -= 1
    j = kl + sl
    s = seq
    while j > kl:
        h[j] = s & 0xFF
        s = s >> 8
        j -= 1
    hl = 1 + kl + sl
    i = 0
    while i < hl:
        o[i] = h[i]
        i += 1
    i = 0
    while i < 8:
        n[i] = v[i]
        i += 1
    s = seq
    i = 12
    while i > 7:
        n[i] = v[i] ^ (s & 0xFF)
        s = s >> 8
        i -= 1
    return hl


@micropython.viper
def seal_ccm(enc, xo, ao, st, b0: int, kid: uint, kl: int, seq: uint, sl: int, msg, n: int, out, tag_len: int) -> int:
    # A whole encrypt-mode datagram in one native call (protocol.md sections 1-2): header into out,
    # nonce = IV XOR seq (st[0:13] = IV, st[13:26] = nonce), CBC-MAC over B_0, the header as AAD and
    # the message (xo), CTR with one AES call per block (ao), tag = S_0 ^ MAC. msg must not overlap
    # out. Returns the datagram length.
    s = ptr8(st)
    x = ptr8(xo)
    a = ptr8(ao)
    m = ptr8(msg)
    o = ptr8(out)
    if sl == 0:  # shortest encoding of the sequence number, its length in the flags byte
        sl = 1
        if (seq >> 8) != uint(0):
            sl = 2
        if (seq >> 16) != uint(0):
            sl = 3
        if (seq >> 24) != uint(0):
            sl = 4
        b0 = b0 | (sl - 1)
    o[0] = b0
    i = kl
    k = kid
    while i > 0:
        o[i] = k & 0xFF
        k = k >> 8
        i -= 1
    j = kl + sl
    q = seq
    while j > kl:
        o[j] = q & 0xFF
        q = q >> 8
        j -= 1
    hl = 1 + kl + sl
    i = 0
    while i < 8:
        s[13 + i] = s[i]
        i += 1
    q = seq
    i = 12
    while i > 7:
        s[13 + i] = s[i] ^ (q & 0xFF)
        q = q >> 8
        i -= 1
    # B_0
    x[0] = 0x41 | (((tag_len - 2) >> 1) << 3)
    i = 0
    while i < 13:
        x[1 + i] = s[13 + i]
        i += 1
    x[14] = (n >> 8) & 0xFF
    x[15] = n & 0xFF
    enc(xo, xo)
    # the header as associated data: 2-byte length + at most 9 bytes, one block
    x[1] ^= hl
    i = 0
    while i < hl:
        x[2 + i] ^= o[i]
        i += 1
    enc(xo, xo)
    off = 0
    i = 0
    while i < n:
        x[off] ^= m[i]
        off += 1
        i += 1
        if off == 16:
            enc(xo, xo)
            off = 0
    if off != 0:
        enc(xo, xo)
    # CTR: A_i = 0x01 || nonce || i
    a[0] = 1
    i = 0
    while i < 13:
        a[1 + i] = s[13 + i]
        i += 1
    c = 1
    i = 0
    while i < n:
        a[14] = (c >> 8) & 0xFF
        a[15] = c & 0xFF
        enc(ao, ao)
        j = 0
        while j < 16 and i < n:
            o[hl + i] = m[i] ^ a[j]
            i += 1
            j += 1
        # restore the counter block (enc overwrote it)
        a[0] = 1
        j = 0
        while j < 13:
            a[1 + j] = s[13 + j]
            j += 1
        c += 1
    a[14] = 0
    a[15] = 0
    enc(ao, ao)
    i = 0
    while i < tag_len:
        o[hl + n + i] = a[i] ^ x[i]
        i += 1
    return hl + n + tag_len
