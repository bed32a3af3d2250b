# Ed25519 signature verification (RFC 8032, section 5.1.7), pure Python for the trusted boot part.
#
# Speed matters (every boot verifies the active image) and MicroPython has arbitrary-precision ints
# but slow Python-level calls, so:
#   - points are in extended twisted-Edwards coordinates (X:Y:Z:T), no inversion until the end;
#   - [S]B - [k]A is one Straus double-scalar loop: one shared chain of doublings, width-w NAF
#     digits for both scalars;
#   - the base point's odd multiples are precomputed once (affine "Niels" form y+x, y-x, 2dxy,
#     7 multiplications per addition), the key's odd multiples per call (cached form, 8);
#   - the point formulas are written inline in the loop: a function call per addition would cost
#     more than the arithmetic.
# Only verification lives here: signing stays on the host (imgtool / cryptography).
try:
    from micropython import const
except ImportError:

    def const(x):
        return x


P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = 37095705934669439343138083508754565189542113879843219016388785533085940283555
D2 = (2 * D) % P
SQRT_M1 = 19681161376707505956807079304988542015446066515923890162744021073123829784752
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
_BY = 46316835694926478169428394003475163141307993866256225615783033603165251855960

_W_B = const(6)  # base point: 16 odd multiples, made once (~6 KB of heap)
_W_A = const(5)  # public key: 8 odd multiples, made per verification

_base_table = None


class BadSignature(Exception):
    pass


def _add_cached(p1, q):
    # (X:Y:Z:T) + cached (Y+X, Y-X, 2dT, 2Z): add-2008-hwcd-3, 8 multiplications.
    X1, Y1, Z1, T1 = p1
    ypx, ymx, t2d, z2 = q
    a = (Y1 - X1) * ymx % P
    b = (Y1 + X1) * ypx % P
    c = T1 * t2d % P
    d = Z1 * z2 % P
    e = b - a
    f = d - c
    g = d + c
    h = b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _cached(pt):
    X, Y, Z, T = pt
    return ((Y + X) % P, (Y - X) % P, T * D2 % P, 2 * Z % P)


def _double(pt):
    # dbl-2008-hwcd with a = -1: 4 squarings + 4 multiplications.
    X1, Y1, Z1, _ = pt
    a = X1 * X1 % P
    b = Y1 * Y1 % P
    c = 2 * Z1 * Z1 % P
    h = a + b
    s = X1 + Y1
    e = h - s * s % P
    g = a - b
    f = c + g
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _odd_multiples(pt, count):
    # [pt, 3pt, 5pt, ...] as extended points.
    two = _cached(_double(pt))
    out = [pt]
    for _ in range(count - 1):
        out.append(_add_cached(out[-1], two))
    return out


def _get_base_table():
    # Odd multiples of B in affine Niels form; one shared inversion (Montgomery's trick).
    global _base_table
    if _base_table is None:
        pts = _odd_multiples((_BX, _BY, 1, _BX * _BY % P), 1 << (_W_B - 2))
        prefix = []
        acc = 1
        for pt in pts:
            prefix.append(acc)
            acc = acc * pt[2] % P
        inv = pow(acc, P - 2, P)
        table = [None] * len(pts)
        for i in range(len(pts) - 1, -1, -1):
            X, Y, Z, _ = pts[i]
            zi = inv * prefix[i] % P
            inv = inv * Z % P
            x = X * zi % P
            y = Y * zi % P
            table[i] = ((y + x) % P, (y - x) % P, x * y % P * D2 % P)
        _base_table = table
    return _base_table


def _naf(k, w):
    # Width-w non-adjacent form, least significant digit first; digits odd, |digit| < 2**(w-1),
    # stored + 128 in a bytearray: 257 bytes, not a 2 KB list, so a fragmented heap still has room.
    out = bytearray(b"\x80" * 257)
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


def decode_point(s):
    """The point encoded by 32 bytes `s`, as (x, y); raises BadSignature if it is not one."""
    if len(s) != 32:
        raise BadSignature("point length")
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= P:
        raise BadSignature("non-canonical point")
    yy = y * y % P
    u = (yy - 1) % P
    v = (D * yy + 1) % P
    v3 = v * v % P * v % P
    x = u * v3 % P * pow(u * v3 % P * v3 % P * v % P, (P - 5) // 8, P) % P
    vxx = v * x % P * x % P
    if vxx != u:
        if vxx != P - u:
            raise BadSignature("not on curve")
        x = x * SQRT_M1 % P
    if x == 0 and sign:
        raise BadSignature("non-canonical point")
    if (x & 1) != sign:
        x = P - x
    return x, y


def small_order(public_key):
    """True if the 32-byte key is a point of small order (8A is the identity: the identity itself,
    the order-2 point, ...); raises BadSignature if it is no point at all. Such a key "verifies" a
    forged signature (R = B, S = 1 for the identity) whoever wrote it: the key table refuses it."""
    x, y = decode_point(public_key)
    pt = (x, y, 1, x * y % P)
    for _ in range(3):
        pt = _double(pt)
    return pt[0] % P == 0  # X = 0: the identity (the order-2 point is no multiple of 8)


def verify(public_key, message, signature):
    """Raise BadSignature unless `signature` (64 bytes) is `public_key`'s (32 bytes) on `message`."""
    from cgboot.sha512 import sha512

    if len(signature) != 64 or len(public_key) != 32:
        raise BadSignature("length")
    r_enc = bytes(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if s >= L:
        raise BadSignature("S out of range")
    ax, ay = decode_point(public_key)
    k = int.from_bytes(sha512(r_enc + bytes(public_key) + bytes(message)), "little") % L
    ns = _naf(s, _W_B)
    nk = _naf(k, _W_A)
    b_tab = _get_base_table()
    ax = P - ax  # -A: the loop computes [S]B + [k](-A), which must equal R
    a_tab = [_cached(pt) for pt in _odd_multiples((ax, ay, 1, ax * ay % P), 1 << (_W_A - 2))]

    top = 256
    while top >= 0 and ns[top] == 128 and nk[top] == 128:
        top -= 1
    X, Y, Z, T = 0, 1, 1, 0
    p = P
    i = top
    while i >= 0:
        # doubling (dbl-2008-hwcd, a = -1); T is only needed when an addition follows
        a = X * X % p
        b = Y * Y % p
        c = 2 * Z * Z % p
        h = a + b
        e = X + Y
        e = h - e * e % p
        g = a - b
        f = c + g
        X = e * f % p
        Y = g * h % p
        Z = f * g % p
        di = ns[i] - 128
        dk = nk[i] - 128
        if di or dk:
            T = e * h % p
            if di:
                # mixed addition with an affine Niels point (madd-2008-hwcd-3), 7 multiplications
                if di > 0:
                    ypx, ymx, xy2d = b_tab[di >> 1]
                else:
                    ymx, ypx, xy2d = b_tab[(-di) >> 1]
                    xy2d = -xy2d
                a = (Y - X) * ymx % p
                b = (Y + X) * ypx % p
                c = T * xy2d % p
                d = 2 * Z
                e = b - a
                f = d - c
                g = d + c
                h = b + a
                X = e * f % p
                Y = g * h % p
                Z = f * g % p
                T = e * h % p
            if dk:
                if dk > 0:
                    ypx, ymx, t2d, z2 = a_tab[dk >> 1]
                else:
                    ymx, ypx, t2d, z2 = a_tab[(-dk) >> 1]
                    t2d = -t2d
                a = (Y - X) * ymx % p
                b = (Y + X) * ypx % p
                c = T * t2d % p
                d = Z * z2 % p
                e = b - a
                f = d - c
                g = d + c
                h = b + a
                X = e * f % p
                Y = g * h % p
                Z = f * g % p
                T = e * h % p
        i -= 1
    zi = pow(Z, p - 2, p)
    x = X * zi % p
    y = Y * zi % p
    if (y | ((x & 1) << 255)).to_bytes(32, "little") != r_enc:
        raise BadSignature("signature does not match")
