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
