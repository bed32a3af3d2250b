# The datagram header of docs/protocol.md section 1, shared by every part that builds or reads one.
#   byte 0: X E U C KL(2) SL(2); then the key id (0/2/3/4 bytes) and the sequence (1-4 bytes).
try:
    from micropython import const
except ImportError:

    def const(x):
        return x


FLAG_ENCRYPT = const(0x40)
FLAG_UNLOCKED = const(0x20)
FLAG_CONTROL = const(0x10)
_FLAG_VERSION_ESCAPE = const(0x80)
_KID_LEN = (0, 2, 3, 4)
MAX_SEQ = const(0xFFFFFFFF)
# The largest datagram a device sends (the outbox's one buffer); the hub rejects longer ones as
# "too long" (protocol.md section 10).
MAX_DATAGRAM = const(512)

# uplink control types (payload byte 0 when FLAG_CONTROL is set)
CTRL_HELLO = const(0x01)
CTRL_TAMPER = const(0x02)
CTRL_DACK = const(0x03)
CTRL_CHUNK_REQ = const(0x04)

# tamper / event codes
EVENT_FOREIGN_SIM = const(1)
EVENT_FORGERY_LIMIT = const(2)
EVENT_SEQ_NEAR_EXHAUSTION = const(3)
EVENT_CONSOLE_UNLOCK = const(4)


class Malformed(Exception):
    """Not a cellguard datagram: too short, unsupported version, bad lengths."""


def uint_len(v):
    if v < 0x100:
        return 1
    if v < 0x10000:
        return 2
    if v < 0x1000000:
        return 3
    return 4


def kid_code(kid):
    if kid is None:
        return 0
    if kid < 0x10000:
        return 1
    if kid < 0x1000000:
        return 2
    return 3


def put_uint(buf, off, v, n):
    for i in range(n - 1, -1, -1):
        buf[off + i] = v & 0xFF
        v >>= 8
    return off + n


def get_uint(buf, off, n):
    v = 0
    for i in range(n):
        v = (v << 8) | buf[off + i]
    return v


def write_header(buf, flags, kid, seq):
    """Write flags|KL|SL, key id and sequence into buf[0:]; return the header length."""
    if seq > MAX_SEQ or seq < 0:
        raise ValueError("sequence out of range")
    kc = kid_code(kid)
    sl = uint_len(seq)
    buf[0] = (flags & 0x70) | (kc << 2) | (sl - 1)
    off = put_uint(buf, 1, kid, _KID_LEN[kc]) if kc else 1
    return put_uint(buf, off, seq, sl)


def parse_header(data, n=None):
    """-> (flags, kid or None, seq, header length). Raises Malformed."""
    if n is None:
        n = len(data)
    if n < 2:
        raise Malformed("truncated")
    b0 = data[0]
    if b0 & _FLAG_VERSION_ESCAPE:
        raise Malformed("unsupported version")
    kl = _KID_LEN[(b0 >> 2) & 3]
    sl = (b0 & 3) + 1
    hlen = 1 + kl + sl
    if n < hlen:
        raise Malformed("truncated")
    kid = get_uint(data, 1, kl) if kl else None
    return b0 & 0x70, kid, get_uint(data, 1 + kl, sl), hlen
