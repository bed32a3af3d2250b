# Decoding of downlink payloads (docs/protocol.md section 4): a sequence of records.
# Returns tuples so the caller (the outbox and the application) can dispatch without allocation
# beyond the list: ("ack", seq, bitmap int), ("time", unix), ("config", key, value), ("reboot",),
# ("update_offer", major, minor, revision, size, sha256, chunk), ("chunk", offset, data),
# ("decommission",), ("epoch",). An unknown record ends parsing with ("unknown", type).
import struct

REC_TIME = 0x10
REC_CONFIG = 0x20
REC_REBOOT = 0x30
REC_UPDATE_OFFER = 0x40
REC_CHUNK = 0x50
REC_DECOMMISSION = 0x60
REC_EPOCH = 0x70
COMMANDS = ("config", "reboot", "update_offer", "decommission")


class BadRecord(Exception):
    pass


def acked(seq, bits):
    """The uplink sequences an ACK record covers."""
    out = [seq]
    d = 0
    while bits:
        if bits & 1:
            out.append(seq - 1 - d)
        bits >>= 1
        d += 1
    return out


def parse(payload):
    out = []
    i = 0
    n = len(payload)
    try:
        while i < n:
            t = payload[i]
            if t < 0x10:
                sl = (t & 3) + 1
                nb = (t >> 2) & 3
                if i + 1 + sl + nb > n:
                    raise BadRecord("truncated ACK")
                seq = 0
                for j in range(sl):
                    seq = (seq << 8) | payload[i + 1 + j]
                bits = 0
                for j in range(nb - 1, -1, -1):
                    bits = (bits << 8) | payload[i + 1 + sl + j]
                out.append(("ack", seq, bits))
                i += 1 + sl + nb
            elif t == REC_TIME:
                out.append(("time", struct.unpack_from(">I", payload, i + 1)[0]))
                i += 5
            elif t == REC_CONFIG:
                k, v = struct.unpack_from(">BI", payload, i + 1)
                out.append(("config", k, v))
                i += 6
            elif t == REC_REBOOT:
                out.append(("reboot",))
                i += 1
            elif t == REC_DECOMMISSION:
                out.append(("decommission",))
                i += 1
            elif t == REC_EPOCH:
                out.append(("epoch",))
                i += 1
            elif t == REC_UPDATE_OFFER:
                major, minor, rev, size = struct.unpack_from(">BBHI", payload, i + 1)
                digest = bytes(payload[i + 9 : i + 41])
                chunk = struct.unpack_from(">H", payload, i + 41)[0]
                if len(digest) != 32:
                    raise BadRecord("truncated update offer")
                out.append(("update_offer", major, minor, rev, size, digest, chunk))
                i += 43
            elif t == REC_CHUNK:
                off, m = struct.unpack_from(">IH", payload, i + 1)
                if i + 7 + m > n:
                    raise BadRecord("truncated chunk")
                out.append(("chunk", off, bytes(payload[i + 7 : i + 7 + m])))
                i += 7 + m
            else:
                out.append(("unknown", t))
                break
    except (ValueError, IndexError):  # struct.unpack_from past the end
        raise BadRecord("truncated record")
    return out
