# MCUboot image verification: strict header/TLV parsing, SHA-256, signature, anti-rollback.
#
# Layout (mcu-tools/mcuboot docs/design.md, bootutil/image.h; all little-endian):
#   header (hdr_size >= 32 bytes) | body (img_size bytes) | protected TLVs | unprotected TLVs
# The SHA-256 covers header + body + protected TLVs; the signature covers that SHA-256. Every
# rejection raises Rejected with one of the REASONS below, checked in a fixed order: structure first
# (nothing is hashed until every offset is known to lie inside the buffer), then the hash, the key,
# the signature, and last the security counter (so "downgrade" is only said of an authentic image).
# One parser and one verifier serve both sources: an image in RAM (verify: what the loader mounts)
# and an image in a file, streamed in small chunks (verify_file: an update's candidate, which must
# not need a second image's worth of RAM beside the one that runs; docs/boot.md, "Memory").
import struct

try:
    from hashlib import sha256 as _sha256
except ImportError:  # CircuitPython (cgboot.manifest): hashlib.new only, or the bundled adafruit_hashlib

    def _sha256(data=b""):
        try:
            import hashlib
        except ImportError:
            import adafruit_hashlib as hashlib
        return hashlib.new("sha256", bytes(data))

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


IMAGE_MAGIC = const(0x96F3B83D)
TLV_INFO_MAGIC = const(0x6907)
TLV_PROT_INFO_MAGIC = const(0x6908)
TLV_KEYHASH = const(0x01)
TLV_SHA256 = const(0x10)
TLV_ECDSA_SIG = const(0x22)
TLV_ED25519 = const(0x24)
TLV_SEC_CNT = const(0x50)
HEADER_SIZE = const(32)
# Encrypted, non-bootable, RAM-load and compressed images are not ours to boot.
_UNSUPPORTED_FLAGS = const(0x04 | 0x08 | 0x10 | 0x20 | 0x200 | 0x400 | 0x800)

# Reasons (stable strings: logs, status and tests use them).
UNKNOWN_KEY = "unknown_key"
BAD_SIGNATURE = "bad_signature"
HASH_MISMATCH = "hash_mismatch"
TRUNCATED = "truncated"
OVERSIZED = "oversized"
TLV_OUT_OF_BOUNDS = "tlv_out_of_bounds"
BAD_MAGIC = "bad_magic"
DOWNGRADE = "downgrade"
READ_ERROR = "read_error"  # the flash would not give the bytes back (EIO): nothing to verify
MALFORMED = "malformed"  # bad header size, unsupported flags, missing/duplicate TLV, trailing bytes

ED25519 = "ed25519"
ECDSA_P256 = "ecdsa-p256"
# DER SubjectPublicKeyInfo prefixes: imgtool's key-hash TLV is the SHA-256 of the DER public key.
_SPKI_ED25519 = b"\x30\x2a\x30\x05\x06\x03\x2b\x65\x70\x03\x21\x00"
_SPKI_P256 = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")


class Rejected(Exception):
    """An image that must not run; .reason is one of the module's reason strings."""

    def __init__(self, reason, detail=""):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self):
        return self.reason + (": " + self.detail if self.detail else "")


class TrustedKey:
    """A public key built into the boot part: alg is ED25519 (32 raw bytes) or ECDSA_P256
    (65-byte uncompressed point 04||X||Y)."""

    def __init__(self, alg, raw, name=""):
        if alg == ED25519:
            if len(raw) != 32:
                raise ValueError("Ed25519 key must be 32 bytes")
            from cgboot import ed25519

            try:
                weak = ed25519.small_order(raw)
            except ed25519.BadSignature as e:
                raise ValueError("Ed25519 key is not a point: %s" % e)
            if weak:
                raise ValueError("Ed25519 key of small order: it would accept forged signatures")
            der = _SPKI_ED25519 + raw
        elif alg == ECDSA_P256:
            if len(raw) != 65 or raw[0] != 4:
                raise ValueError("P-256 key must be 65 bytes, uncompressed")
            der = _SPKI_P256 + raw
        else:
            raise ValueError("unknown algorithm")
        self.alg = alg
        self.raw = bytes(raw)
        self.name = name
        self.key_hash = _sha256(der).digest()


def trusted(table):
    """TrustedKey objects from a table of (alg, raw, name) rows, as in cgboot.trusted_keys.KEYS. A
    row that is no usable key (a small-order Ed25519 point, a wrong length) is refused loudly and
    left out: images signed with it then fail as unknown_key, the others still boot."""
    keys = []
    for row in table:
        try:
            keys.append(TrustedKey(*row))
        except ValueError as e:
            print("cgboot: trusted key %r refused: %s" % (row[2] if len(row) > 2 else "?", e))
    return keys


class ImageInfo:
    """What a verified image is: its version, security counter, key, digest and where the body is."""

    def __init__(self, version, security_counter, hdr_size, img_size, digest, key):
        self.version = version  # (major, minor, revision, build)
        self.security_counter = security_counter
        self.hdr_size = hdr_size
        self.img_size = img_size
        self.digest = digest
        self.key = key

    def version_str(self):
        v = self.version
        return "%d.%d.%d+%d" % v

    def body(self, buf):
        """The body (the application payload) as a zero-copy view of the verified buffer."""
        return memoryview(buf)[self.hdr_size : self.hdr_size + self.img_size]


CHUNK = const(1024)  # bytes of a slot file hashed at a time (verify_file's whole buffer)


class _Buffer:
    # An image held in RAM (what the loader mounts): reads are zero-copy views of it.
    def __init__(self, buf):
        self.mv = memoryview(buf)
        self.size = len(buf)

    def read(self, off, n):
        return self.mv[off : off + n]

    def sha256(self, end):
        return _sha256(self.mv[:end]).digest()


class _File:
    # An image in a slot file, read in CHUNK-byte pieces: verifying it needs no copy of it in RAM.
    # Every offset is bounds-checked against the size (taken once, at open) before it is read; a
    # file that is shorter than that when read has changed underneath and is TRUNCATED.
    def __init__(self, f, chunk):
        self.f = f
        self.chunk = chunk
        self.size = f.seek(0, 2)

    def read(self, off, n):
        self.f.seek(off)
        data = self.f.read(n)
        if len(data) != n:
            raise Rejected(TRUNCATED, "file shrank while read")
        return data

    def sha256(self, end):
        h = _sha256()
        buf = memoryview(bytearray(min(self.chunk, end) or 1))
        self.f.seek(0)
        left = end
        while left:
            k = self.f.readinto(buf[: min(left, len(buf))])
            if not k:
                raise Rejected(TRUNCATED, "file shrank while hashed")
            h.update(buf[:k])
            left -= k
        return h.digest()


def _walk_tlvs(src, start, total, magic, found, allowed):
    # One TLV area: info (magic u16, total u16 incl. itself) then u16 type, u16 len, value.
    if start + 4 > src.size:
        raise Rejected(TRUNCATED, "TLV info")
    m, tot = struct.unpack("<HH", src.read(start, 4))
    if m != magic:
        raise Rejected(TLV_OUT_OF_BOUNDS, "TLV info magic 0x%04x" % m)
    if total is not None and tot != total:
        raise Rejected(TLV_OUT_OF_BOUNDS, "protected TLV size disagrees with header")
    if tot < 4:
        raise Rejected(TLV_OUT_OF_BOUNDS, "TLV area size")
    end = start + tot
    if end > src.size:
        raise Rejected(TRUNCATED, "TLV area past end of image")
    off = start + 4
    while off < end:
        if off + 4 > end:
            raise Rejected(TLV_OUT_OF_BOUNDS, "TLV header past area")
        t, n = struct.unpack("<HH", src.read(off, 4))
        off += 4
        if off + n > end:
            raise Rejected(TLV_OUT_OF_BOUNDS, "TLV 0x%02x length %d" % (t, n))
        if t in allowed:
            if t in found:
                raise Rejected(MALFORMED, "duplicate TLV 0x%02x" % t)
            found[t] = (off, n)
        off += n
    return end


def parse(buf, max_size=None):
    """Check structure only; returns (hdr_size, img_size, version, prot_end, tlvs) or raises."""
    return _parse(_Buffer(buf), max_size)


def _parse(src, max_size):
    # The one parser, over a buffer or a file (src.size, src.read(off, n)): nothing is read before
    # its offset is known to lie inside the image.
    n = src.size
    if max_size is not None and n > max_size:
        raise Rejected(OVERSIZED, "%d > slot %d" % (n, max_size))
    if n < HEADER_SIZE:
        raise Rejected(TRUNCATED, "header")
    magic, _load, hdr_size, prot_size, img_size, flags, vmaj, vmin, vrev, vbuild = struct.unpack(
        "<IIHHIIBBHI", src.read(0, 28)
    )
    if magic != IMAGE_MAGIC:
        raise Rejected(BAD_MAGIC, "0x%08x" % magic)
    if hdr_size < HEADER_SIZE:
        raise Rejected(MALFORMED, "header size %d" % hdr_size)
    if flags & _UNSUPPORTED_FLAGS:
        raise Rejected(MALFORMED, "flags 0x%x" % flags)
    body_end = hdr_size + img_size
    if max_size is not None and body_end > max_size:
        raise Rejected(OVERSIZED, "body past slot end")
    if body_end > n:
        raise Rejected(TRUNCATED, "body")
    found = {}
    prot_end = body_end
    if prot_size:
        prot_end = _walk_tlvs(src, body_end, prot_size, TLV_PROT_INFO_MAGIC, found, (TLV_SEC_CNT,))
    end = _walk_tlvs(
        src, prot_end, None, TLV_INFO_MAGIC, found, (TLV_SHA256, TLV_KEYHASH, TLV_ED25519, TLV_ECDSA_SIG)
    )
    if end != n:
        raise Rejected(MALFORMED, "%d bytes after the TLVs" % (n - end))
    return hdr_size, img_size, (vmaj, vmin, vrev, vbuild), prot_end, found


def verify(buf, trusted_keys, min_counter=0, max_size=None):
    """Verify a whole image held in `buf`; return ImageInfo or raise Rejected.

    trusted_keys: TrustedKey objects built into the boot part. min_counter: the device's
    anti-rollback floor (images with a lower security counter are a downgrade). max_size: the slot.
    """
    return _verify(_Buffer(buf), trusted_keys, min_counter, max_size)


def verify_file(path, trusted_keys, min_counter=0, max_size=None, chunk=CHUNK):
    """verify() of the image in file `path`, streamed: RAM for `chunk` bytes, never the image.
    Same checks in the same order, so the same rejection reasons. For an image that is not run
    from this check (an update's candidate); what boots is verified again in the buffer it runs from."""
    try:
        f = open(path, "rb")
    except OSError:
        raise Rejected(TRUNCATED, "no image file")
    try:
        return _verify(_File(f, chunk), trusted_keys, min_counter, max_size)
    finally:
        f.close()


def file_sha256(path, chunk=CHUNK):
    """SHA-256 of a whole file, read `chunk` bytes at a time."""
    with open(path, "rb") as f:
        src = _File(f, chunk)
        return src.sha256(src.size)


def _verify(src, trusted_keys, min_counter, max_size):
    hdr_size, img_size, version, prot_end, tlvs = _parse(src, max_size)
    if TLV_SHA256 not in tlvs or tlvs[TLV_SHA256][1] != 32:
        raise Rejected(MALFORMED, "no SHA-256 TLV")
    if TLV_KEYHASH not in tlvs or tlvs[TLV_KEYHASH][1] != 32:
        raise Rejected(MALFORMED, "no key-hash TLV")
    digest = src.sha256(prot_end)
    if digest != bytes(src.read(*tlvs[TLV_SHA256])):
        raise Rejected(HASH_MISMATCH)
    key_hash = bytes(src.read(*tlvs[TLV_KEYHASH]))
    key = None
    for k in trusted_keys:
        if k.key_hash == key_hash:
            key = k
            break
    if key is None:
        raise Rejected(UNKNOWN_KEY, key_hash[:8].hex())
    sig_tlv = TLV_ED25519 if key.alg == ED25519 else TLV_ECDSA_SIG
    if sig_tlv not in tlvs:
        raise Rejected(BAD_SIGNATURE, "no %s signature" % key.alg)
    sig = bytes(src.read(*tlvs[sig_tlv]))
    if key.alg == ED25519:
        from cgboot import ed25519 as alg
    else:
        from cgboot import p256 as alg
    try:
        alg.verify(key.raw, digest, sig)
    except alg.BadSignature as e:
        raise Rejected(BAD_SIGNATURE, str(e))
    counter = 0
    if TLV_SEC_CNT in tlvs:
        off, n = tlvs[TLV_SEC_CNT]
        if n != 4:
            raise Rejected(MALFORMED, "security counter length")
        counter = struct.unpack("<I", src.read(off, 4))[0]
    if counter < min_counter:
        raise Rejected(DOWNGRADE, "security counter %d < %d" % (counter, min_counter))
    return ImageInfo(version, counter, hdr_size, img_size, digest, key)
