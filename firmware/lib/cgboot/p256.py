# ECDSA P-256 signature verification (FIPS 186-4 / SEC 1), pure Python for the trusted boot part.
#
# `verify(public_key, digest, signature)` takes the SHA-256 digest itself (imgtool's ECDSA
# signature is over SHA-256 of the signed region, which the verifier has already computed) and
# the DER signature imgtool writes. u1*G + u2*Q is one Straus loop in Jacobian coordinates (a = -3)
# with width-w NAF digits; both tables are made affine with one shared inversion so every
# addition is a mixed (Jacobian + affine) one.
try:
    from micropython import const
except ImportError:

    def const(x):
        return x


P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5

_W_G = const(6)
_W_Q = const(5)
_g_table = None


class BadSignature(Exception):
    pass


def _double(X1, Y1, Z1):
    # dbl-2001-b (a = -3)
    p = P
    delta = Z1 * Z1 % p
    gamma = Y1 * Y1 % p
    beta = X1 * gamma % p
    alpha = 3 * (X1 - delta) * (X1 + delta) % p
    X3 = (alpha * alpha - 8 * beta) % p
    Z3 = ((Y1 + Z1) * (Y1 + Z1) - gamma - delta) % p
    Y3 = (alpha * (4 * beta - X3) - 8 * gamma * gamma) % p
    return X3, Y3, Z3


def _add_affine(X1, Y1, Z1, x2, y2):
    # madd-2007-bl; handles the identity (Z1 = 0) and doubling cases.
    p = P
    if Z1 == 0:
        return x2, y2, 1
    z1z1 = Z1 * Z1 % p
    u2 = x2 * z1z1 % p
    s2 = y2 * Z1 % p * z1z1 % p
    h = (u2 - X1) % p
    r = 2 * (s2 - Y1) % p
    if h == 0:
        if r == 0:
            return _double(X1, Y1, Z1)
        return 1, 1, 0
    hh = h * h % p
    i = 4 * hh % p
    j = h * i % p
    v = X1 * i % p
    X3 = (r * r - j - 2 * v) % p
    Y3 = (r * (v - X3) - 2 * Y1 * j) % p
    Z3 = ((Z1 + h) * (Z1 + h) - z1z1 - hh) % p
    return X3, Y3, Z3


def _odd_multiples_affine(x, y, count):
    # [Q, 3Q, 5Q, ...] in affine coordinates, one shared inversion (Montgomery's trick).
    p = P
    X2, Y2, Z2 = _double(x, y, 1)
    z2i = pow(Z2, p - 2, p)
    zz = z2i * z2i % p
    x2 = X2 * zz % p
    y2 = Y2 * zz % p * z2i % p
    pts = [(x, y, 1)]
    for _ in range(count - 1):
        X, Y, Z = pts[-1]
        pts.append(_add_affine(X, Y, Z, x2, y2))
    prefix = []
    acc = 1
    for pt in pts:
        prefix.append(acc)
        acc = acc * pt[2] % p
    if acc == 0:
        raise BadSignature("degenerate key")
    inv = pow(acc, p - 2, p)
    out = [None] * count
    for i in range(count - 1, -1, -1):
        X, Y, Z = pts[i]
        zi = inv * prefix[i] % p
        inv = inv * Z % p
        zz = zi * zi % p
        out[i] = (X * zz % p, Y * zz % p * zi % p)
    return out


def _naf(k, w):
    out = bytearray(b"\x80" * 258)  # digit + 128: 258 bytes, not a 2 KB list
    width = 1 << w
    half = width >> 1
    mask = width - 1
    i = 0
    while k:
        if k & 1:
            digit = k & mask
            if digit >= half:
                digit -= width
            out[i] = digit + 128
            k -= digit
        k >>= 1
        i += 1
    return out


def _der_ints(sig):
    # SEQUENCE { INTEGER r, INTEGER s }, short-form lengths only (a P-256 signature is < 128 bytes).
    if len(sig) < 8 or sig[0] != 0x30 or sig[1] != len(sig) - 2:
        raise BadSignature("DER sequence")
    out = []
    off = 2
    for _ in range(2):
        if off + 2 > len(sig) or sig[off] != 0x02:
            raise BadSignature("DER integer")
        n = sig[off + 1]
        off += 2
        if n == 0 or n > 33 or off + n > len(sig):
            raise BadSignature("DER integer length")
        v = sig[off : off + n]
        if v[0] & 0x80 or (n > 1 and v[0] == 0 and not v[1] & 0x80):
            raise BadSignature("DER integer encoding")
        out.append(int.from_bytes(v, "big"))
        off += n
    if off != len(sig):
        raise BadSignature("DER trailing bytes")
    return out


def decode_point(raw):
    if len(raw) != 65 or raw[0] != 4:
        raise BadSignature("public key encoding")
    x = int.from_bytes(raw[1:33], "big")
    y = int.from_bytes(raw[33:], "big")
    if x >= P or y >= P or (y * y - x * x * x + 3 * x - B) % P:
        raise BadSignature("public key not on curve")
    return x, y


def verify(public_key, digest, signature):
    """Raise BadSignature unless `signature` (DER) is `public_key`'s (65 bytes) over `digest`."""
    global _g_table
    r, s = _der_ints(signature)
    if not (0 < r < N and 0 < s < N):
        raise BadSignature("r or s out of range")
    qx, qy = decode_point(public_key)
    e = int.from_bytes(digest[:32], "big")
    w = pow(s, N - 2, N)
    u1 = e * w % N
    u2 = r * w % N
    if _g_table is None:
        _g_table = _odd_multiples_affine(GX, GY, 1 << (_W_G - 2))
    g_tab = _g_table
    q_tab = _odd_multiples_affine(qx, qy, 1 << (_W_Q - 2))
    n1 = _naf(u1, _W_G)
    n2 = _naf(u2, _W_Q)
    p = P
    X, Y, Z = 1, 1, 0
    top = 257
    while top >= 0 and n1[top] == 128 and n2[top] == 128:
        top -= 1
    i = top
    while i >= 0:
        if Z:
            X, Y, Z = _double(X, Y, Z)
        d = n1[i] - 128
        if d:
            x2, y2 = g_tab[d >> 1] if d > 0 else g_tab[(-d) >> 1]
            X, Y, Z = _add_affine(X, Y, Z, x2, y2 if d > 0 else p - y2)
        d = n2[i] - 128
        if d:
            x2, y2 = q_tab[d >> 1] if d > 0 else q_tab[(-d) >> 1]
            X, Y, Z = _add_affine(X, Y, Z, x2, y2 if d > 0 else p - y2)
        i -= 1
    if Z == 0:
        raise BadSignature("point at infinity")
    zi = pow(Z, p - 2, p)
    if X * zi % p * zi % p % N != r:
        raise BadSignature("signature does not match")
