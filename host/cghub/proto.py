"""The cellguard wire protocol (docs/protocol.md) for the hub, written from the document alone.

Independent of the firmware's implementation on purpose: it uses `cryptography` for AES-CCM, HMAC
and HKDF, so every end-to-end test is also an interoperability test of two implementations.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SALT = b"cellguard/v1"
FLAG_VERSION_ESCAPE = 0x80
FLAG_ENCRYPT = 0x40
FLAG_UNLOCKED = 0x20
FLAG_CONTROL = 0x10
KID_LEN = (0, 2, 3, 4)
MAX_SEQ = 0xFFFFFFFF
MAX_UPLINK = 512  # the largest datagram the firmware sends (its outbox buffer); longer: "too long"

CTRL_HELLO = 0x01
CTRL_TAMPER = 0x02
CTRL_DACK = 0x03
CTRL_CHUNK_REQ = 0x04
CONTROL_NAMES = {CTRL_HELLO: "hello", CTRL_TAMPER: "tamper", CTRL_DACK: "dack", CTRL_CHUNK_REQ: "chunk_req"}

REC_TIME = 0x10
REC_CONFIG = 0x20
REC_REBOOT = 0x30
REC_UPDATE_OFFER = 0x40
REC_CHUNK = 0x50
REC_DECOMMISSION = 0x60
REC_EPOCH = 0x70

ACK_BITMAP_SEQS = 24  # the ACK bitmap covers at most 3 bytes below the acked sequence


class ProtocolError(Exception):
    """A datagram that is not acceptable; str() is the rejection reason the hub logs."""


def derive(root: bytes, label: bytes, length: int) -> bytes:
    return HKDF(hashes.SHA256(), length, SALT, label).derive(root)


def epoch_suffix(epoch: int) -> bytes:
    """The key epoch's part of an HKDF label (protocol.md section 3): none for epoch 0."""
    return b"" if epoch == 0 else b" e%d" % epoch


@dataclass
class DirectionKeys:
    ccm: AESCCM
    ccm_tag: int
    iv: bytes
    mac_key: bytes
    hmac_tag: int

    @classmethod
    def make(cls, root: bytes, direction: str, ccm_tag: int = 8, hmac_tag: int = 16, epoch: int = 0) -> DirectionKeys:
        p = b"cg " + direction.encode() + b" "
        s = epoch_suffix(epoch)
        return cls(
            AESCCM(derive(root, p + b"ccm key" + s, 16), tag_length=ccm_tag),
            ccm_tag,
            derive(root, p + b"ccm iv" + s, 13),
            derive(root, p + b"hmac key" + s, 32),
            hmac_tag,
        )

    def nonce(self, seq: int) -> bytes:
        # IV XOR (8 zero bytes || seq as 5 bytes): one integer XOR (the hub's hot path).
        return (int.from_bytes(self.iv, "big") ^ (seq & 0xFFFFFFFFFF)).to_bytes(13, "big")

    def tag_len(self, encrypt: bool) -> int:
        return self.ccm_tag if encrypt else self.hmac_tag


@dataclass
class Header:
    flags: int
    key_id: int | None
    seq: int
    length: int

    @property
    def encrypt(self) -> bool:
        return bool(self.flags & FLAG_ENCRYPT)


def uint_len(v: int) -> int:
    return 1 if v < 1 << 8 else 2 if v < 1 << 16 else 3 if v < 1 << 24 else 4


def encode_header(flags: int, key_id: int | None, seq: int) -> bytes:
    if key_id is None:
        kc = 0
    else:
        kc = 1 if key_id < 1 << 16 else 2 if key_id < 1 << 24 else 3
    sl = uint_len(seq)
    out = bytes([(flags & 0x70) | (kc << 2) | (sl - 1)])
    if kc:
        out += key_id.to_bytes(KID_LEN[kc], "big")
    return out + seq.to_bytes(sl, "big")


def parse_header(data: bytes) -> Header:
    if len(data) < 2:
        raise ProtocolError("truncated")
    b0 = data[0]
    if b0 & FLAG_VERSION_ESCAPE:
        raise ProtocolError("unsupported version")
    kl = KID_LEN[(b0 >> 2) & 3]
    sl = (b0 & 3) + 1
    n = 1 + kl + sl
    if len(data) < n:
        raise ProtocolError("truncated")
    kid = int.from_bytes(data[1 : 1 + kl], "big") if kl else None
    return Header(b0 & 0x70, kid, int.from_bytes(data[1 + kl : n], "big"), n)


def seal(keys: DirectionKeys, flags: int, key_id: int | None, seq: int, plaintext: bytes) -> bytes:
    header = encode_header(flags, key_id, seq)
    if flags & FLAG_ENCRYPT:
        return header + keys.ccm.encrypt(keys.nonce(seq), plaintext, header)
    body = header + plaintext
    return body + hmac.new(keys.mac_key, body, hashlib.sha256).digest()[: keys.hmac_tag]


def open_(keys: DirectionKeys, header: Header, data: bytes) -> bytes:
    """Verify the tag and return the plaintext; ProtocolError("bad tag"/"truncated")."""
    tl = keys.tag_len(header.encrypt)
    if len(data) < header.length + tl:
        raise ProtocolError("truncated")
    hdr = data[: header.length]
    if header.encrypt:
        try:
            return keys.ccm.decrypt(keys.nonce(header.seq), data[header.length :], hdr)
        except InvalidTag:
            raise ProtocolError("bad tag") from None
    want = hmac.new(keys.mac_key, data[:-tl], hashlib.sha256).digest()[:tl]
    if not hmac.compare_digest(want, data[-tl:]):
        raise ProtocolError("bad tag")
    return data[header.length : -tl]


# ---- downlink records ------------------------------------------------------------------------
def ack_record(seq: int, also: set[int]) -> bytes:
    """ACK of `seq`, with a bitmap of which of the 24 sequences below it are also accepted."""
    bits = 0
    for s in also:
        d = seq - 1 - s
        if 0 <= d < ACK_BITMAP_SEQS:
            bits |= 1 << d
    nbytes = (bits.bit_length() + 7) // 8
    sl = uint_len(seq)
    return bytes([(nbytes << 2) | (sl - 1)]) + seq.to_bytes(sl, "big") + bits.to_bytes(nbytes, "little")


def time_record(unix: int) -> bytes:
    return struct.pack(">BI", REC_TIME, unix & 0xFFFFFFFF)


def config_record(key: int, value: int) -> bytes:
    return struct.pack(">BBI", REC_CONFIG, key, value)


def reboot_record() -> bytes:
    return bytes([REC_REBOOT])


def decommission_record() -> bytes:
    return bytes([REC_DECOMMISSION])


def epoch_record() -> bytes:
    """EPOCH: the hub's failed-verification limit was reached; the device moves to the next epoch."""
    return bytes([REC_EPOCH])


def update_offer_record(major: int, minor: int, revision: int, size: int, sha256: bytes, chunk: int) -> bytes:
    if len(sha256) != 32:
        raise ValueError("sha256 must be 32 bytes")
    return struct.pack(">BBBHI", REC_UPDATE_OFFER, major, minor, revision, size) + sha256 + struct.pack(">H", chunk)


def chunk_record(offset: int, data: bytes) -> bytes:
    return struct.pack(">BIH", REC_CHUNK, offset, len(data)) + data


def parse_records(payload: bytes) -> list[tuple]:
    """Decode a downlink payload (used by tests and tools; the device has its own decoder)."""
    out: list[tuple] = []
    i = 0
    while i < len(payload):
        t = payload[i]
        if t < 0x10:
            sl = (t & 3) + 1
            nb = (t >> 2) & 3
            seq = int.from_bytes(payload[i + 1 : i + 1 + sl], "big")
            bits = int.from_bytes(payload[i + 1 + sl : i + 1 + sl + nb], "little")
            out.append(("ack", seq, {seq - 1 - d for d in range(24) if bits >> d & 1}))
            i += 1 + sl + nb
        elif t == REC_TIME:
            out.append(("time", struct.unpack_from(">I", payload, i + 1)[0]))
            i += 5
        elif t == REC_CONFIG:
            out.append(("config", *struct.unpack_from(">BI", payload, i + 1)))
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
            digest = payload[i + 9 : i + 41]
            (chunk,) = struct.unpack_from(">H", payload, i + 41)
            out.append(("update_offer", major, minor, rev, size, digest, chunk))
            i += 43
        elif t == REC_CHUNK:
            off, n = struct.unpack_from(">IH", payload, i + 1)
            out.append(("chunk", off, payload[i + 7 : i + 7 + n]))
            i += 7 + n
        else:
            out.append(("unknown", t))
            break
    return out
