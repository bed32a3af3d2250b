"""The boot part's signature primitives: RFC 8032 vectors, cross-checks against `cryptography`."""

import hashlib
import json
from pathlib import Path

import pytest
from cgboot import ed25519, p256
from cgboot import sha512 as cg_sha512
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import ed25519 as crypto_ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

VECTORS = json.loads((Path(__file__).parent / "vectors" / "ed25519_rfc8032.json").read_text())["vectors"]

_VECTOR_SCRIPT = """
import json
from cgboot import ed25519
vs = json.loads(%r)
for v in vs:
    pk = bytes.fromhex(v["public_key"]); msg = bytes.fromhex(v["message"]); sig = bytes.fromhex(v["signature"])
    ed25519.verify(pk, msg, sig)
    bad = bytearray(sig); bad[5] ^= 0x10
    try:
        ed25519.verify(pk, msg, bytes(bad)); print("ACCEPTED FORGERY", v["name"])
    except ed25519.BadSignature:
        pass
    try:
        ed25519.verify(pk, msg + b"x", sig); print("ACCEPTED OTHER MESSAGE", v["name"])
    except ed25519.BadSignature:
        pass
    print("ok", v["name"])
"""


def test_rfc8032_vectors(runtime):
    out = runtime.run(_VECTOR_SCRIPT % json.dumps(VECTORS)).splitlines()
    assert out == [f"ok {v['name']}" for v in VECTORS]


def test_sha512_matches_hashlib():
    for n in (0, 1, 111, 112, 127, 128, 129, 1000):
        data = bytes(range(256)) * 4
        assert cg_sha512.sha512(data[:n]) == hashlib.sha512(data[:n]).digest()


def _raw(pub) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@settings(max_examples=40, deadline=None)
@given(msg=st.binary(max_size=200), flip=st.integers(0, 64 * 8 - 1), seed=st.binary(min_size=32, max_size=32))
def test_ed25519_agrees_with_cryptography(msg, flip, seed):
    key = crypto_ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    pk = _raw(key.public_key())
    sig = key.sign(msg)
    ed25519.verify(pk, msg, sig)
    bad = bytearray(sig)
    bad[flip // 8] ^= 1 << (flip % 8)
    try:
        key.public_key().verify(bytes(bad), msg)
        accepted_by_reference = True  # a flip in an unused bit of S can still be valid for neither
    except Exception:
        accepted_by_reference = False
    try:
        ed25519.verify(pk, msg, bytes(bad))
        accepted = True
    except ed25519.BadSignature:
        accepted = False
    assert accepted == accepted_by_reference


def test_ed25519_rejects_bad_points_and_scalars():
    key = crypto_ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32))
    pk, sig = _raw(key.public_key()), key.sign(b"m")
    big_s = sig[:32] + (int.from_bytes(sig[32:], "little") + ed25519.L).to_bytes(32, "little")
    with pytest.raises(ed25519.BadSignature, match="S out of range"):
        ed25519.verify(pk, b"m", big_s)
    with pytest.raises(ed25519.BadSignature):
        ed25519.verify(b"\xff" * 32, b"m", sig)  # y >= p: not canonical
    with pytest.raises(ed25519.BadSignature):
        ed25519.verify(pk[:31], b"m", sig)


def _p256_raw(pub) -> bytes:
    return pub.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


@settings(max_examples=30, deadline=None)
@given(msg=st.binary(max_size=100), flip=st.integers(0, 255))
def test_p256_agrees_with_cryptography(msg, flip):
    key = ec.generate_private_key(ec.SECP256R1())
    pk = _p256_raw(key.public_key())
    digest = hashlib.sha256(msg).digest()
    sig = key.sign(msg, ec.ECDSA(hashes.SHA256()))
    p256.verify(pk, digest, sig)
    bad = bytearray(digest)
    bad[flip // 8] ^= 1 << (flip % 8)
    with pytest.raises(p256.BadSignature):
        p256.verify(pk, bytes(bad), sig)


def test_p256_scalar_edges_agree_with_cryptography():
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

    key = ec.generate_private_key(ec.SECP256R1())
    pk = _p256_raw(key.public_key())
    digest = hashlib.sha256(b"edge").digest()
    r, s = decode_dss_signature(key.sign(b"edge", ec.ECDSA(hashes.SHA256())))
    p256.verify(pk, digest, encode_dss_signature(r, p256.N - s))  # the other S is valid too (no low-S rule)
    key.public_key().verify(encode_dss_signature(r, p256.N - s), b"edge", ec.ECDSA(hashes.SHA256()))
    for bad_r, bad_s in ((0, s), (r, 0), (p256.N, s), (r, p256.N), (r + p256.N, s)):
        with pytest.raises(p256.BadSignature):
            p256.verify(pk, digest, encode_dss_signature(bad_r, bad_s))


def test_p256_rejects_malformed_der():
    key = ec.generate_private_key(ec.SECP256R1())
    pk = _p256_raw(key.public_key())
    digest = hashlib.sha256(b"x").digest()
    sig = key.sign(b"x", ec.ECDSA(hashes.SHA256()))
    for bad in (sig[:-1], sig + b"\x00", b"\x31" + sig[1:], sig[:2] + b"\x03" + sig[3:]):
        with pytest.raises(p256.BadSignature):
            p256.verify(pk, digest, bad)
    with pytest.raises(p256.BadSignature, match="not on curve"):
        p256.verify(pk[:-1] + bytes([pk[-1] ^ 1]), digest, sig)


_P256_MP = """
from cgboot import p256
rows = %r
for pk, dg, sig, ok in rows:
    try:
        p256.verify(bytes.fromhex(pk), bytes.fromhex(dg), bytes.fromhex(sig)); got = True
    except p256.BadSignature:
        got = False
    print(got == ok)
"""


def test_p256_on_micropython_matches_cryptography(mp):
    rows = []
    for i in range(6):
        key = ec.generate_private_key(ec.SECP256R1())
        msg = bytes([i]) * (i * 10)
        digest = hashlib.sha256(msg).digest()
        sig = key.sign(msg, ec.ECDSA(hashes.SHA256()))
        rows.append((_p256_raw(key.public_key()).hex(), digest.hex(), sig.hex(), True))
        rows.append(
            (_p256_raw(key.public_key()).hex(), hashlib.sha256(msg + b"!").hexdigest(), sig.hex(), False)
        )
    assert mp.run(_P256_MP % (rows,)).split() == ["True"] * len(rows)


# The 8 points of small order (8A = identity): a trusted key among them "verifies" forgeries.
SMALL_ORDER = {
    "identity": "01" + "00" * 31,
    "order 2": "ec" + "ff" * 30 + "7f",
    "order 4": "00" * 32,
    "order 4 (-x)": "00" * 31 + "80",
    "order 8 a": "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "order 8 b": "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "order 8 c": "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "order 8 d": "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
}
_BASE_POINT = "58" + "66" * 31

_SMALL_ORDER = """
import hashlib
from cgboot import ed25519, image
forged = bytes.fromhex(%r) + (1).to_bytes(32, "little")     # R = B, S = 1
rows = %r
print("real key:", len(image.trusted([("ed25519", bytes.fromhex(%r), "real")])))
for name in rows:
    raw = bytes.fromhex(rows[name])
    try:
        ed25519.verify(raw, b"image digest", forged)
        bare = "forgery verifies"
    except ed25519.BadSignature:
        bare = "refused"
    print(name, "|", bare, "|", len(image.trusted([("ed25519", raw, name)])), "key(s) loaded")
"""


def test_small_order_ed25519_keys_are_refused_when_the_table_is_loaded(runtime):
    # With the identity (or the order-2 point) in the trusted-key table, the forged signature
    # R = B, S = 1 verifies for any image: the table must never hold such a key.
    real = _raw(crypto_ed25519.Ed25519PrivateKey.generate().public_key()).hex()
    out = runtime.run(_SMALL_ORDER % (_BASE_POINT, SMALL_ORDER, real)).splitlines()
    assert out[0] == "real key: 1"
    rows = {line.split(" | ")[0]: line.split(" | ")[1:] for line in out[1:] if " | " in line}
    assert rows["identity"][0] == "forgery verifies"  # why: the bare equation holds for this key
    assert all(loaded == "0 key(s) loaded" for _, loaded in rows.values()), out
    assert sum(line.startswith("cgboot: trusted key") for line in out) == len(SMALL_ORDER)  # loudly


def test_image_trust_refuses_a_small_order_key(tmp_path):
    from cgdev import image as image_tool

    for name in ("identity", "order 2"):
        pub = crypto_ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(SMALL_ORDER[name]))
        pem = tmp_path / "weak.pem"
        pem.write_bytes(pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        with pytest.raises(image_tool.ImageToolError, match="small order"):
            image_tool.trusted_module([pem])
        assert image_tool.main(["trust", str(pem), "-o", str(tmp_path / "trusted.py")]) != 0
        assert not (tmp_path / "trusted.py").exists()
