"""cellguard.crypto: published vectors on both runtimes, and equality with `cryptography`."""

import hashlib
import hmac

from cellguard import crypto
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

VECTORS_SCRIPT = """
from cellguard import crypto
from crypto_vectors import RFC3610, RFC4231, RFC5869
h = bytes.fromhex
ok = 0
for key, nonce, aad, pt, expected, tlen in RFC3610:
    ccm = crypto.AesCcm(h(key), tag_len=tlen)
    assert ccm.seal(h(nonce), h(aad), h(pt)) == h(expected), ('ccm seal', nonce)
    assert ccm.open(h(nonce), h(aad), h(expected)) == h(pt), ('ccm open', nonce)
    bad = bytearray(h(expected)); bad[-1] ^= 1
    try:
        ccm.open(h(nonce), h(aad), bytes(bad)); raise AssertionError('forged tag accepted')
    except crypto.TagMismatch:
        pass
    ok += 1
for key, data, mac in RFC4231:
    assert crypto.hmac_sha256(h(key), h(data))[: len(h(mac))] == h(mac), ('hmac', key[:8])
    ok += 1
for ikm, salt, info, n, prk, okm in RFC5869:
    assert crypto.hkdf_extract(h(salt), h(ikm)) == h(prk)
    assert crypto.hkdf(h(ikm), h(salt), h(info), n) == h(okm)
    ok += 1
assert crypto.ct_equal(b'abc', b'abc') and not crypto.ct_equal(b'abc', b'abd') and not crypto.ct_equal(b'a', b'ab')
print(ok)
"""


def test_published_vectors(runtime):
    # 22 CCM packets (RFC 3610), 7 HMAC cases incl. the truncated case 5 (RFC 4231), 2 HKDF (RFC 5869)
    assert runtime.run(VECTORS_SCRIPT).strip() == "31"


def test_ccm_longer_than_the_preallocated_keystream(runtime):
    # Messages longer than max_len are processed in chunks; the result must not change.
    out = runtime.run(
        "from cellguard import crypto\n"
        "k = bytes(range(16)); n = bytes(13); m = bytes(i & 255 for i in range(700))\n"
        "a = crypto.AesCcm(k, 8, max_len=256).seal(n, b'hdr', m)\n"
        "b = crypto.AesCcm(k, 8, max_len=1024).seal(n, b'hdr', m)\n"
        "print(a == b, crypto.AesCcm(k, 8, max_len=32).open(n, b'hdr', a) == m, a[-8:].hex())"
    )
    ok1, ok2, tag = out.split()
    expected = AESCCM(bytes(range(16)), tag_length=8).encrypt(bytes(13), bytes(i & 255 for i in range(700)), b"hdr")
    assert (ok1, ok2, tag) == ("True", "True", expected[-8:].hex())


@settings(max_examples=150, deadline=None)
@given(
    key=st.binary(min_size=16, max_size=16),
    nonce=st.binary(min_size=13, max_size=13),
    aad=st.binary(max_size=40),
    msg=st.binary(max_size=300),
    tag_len=st.sampled_from([8, 12, 16]),
)
def test_ccm_equals_cryptography(key, nonce, aad, msg, tag_len):
    ours = crypto.AesCcm(key, tag_len=tag_len, max_len=64)
    theirs = AESCCM(key, tag_length=tag_len)
    sealed = ours.seal(nonce, aad, msg)
    assert sealed == theirs.encrypt(nonce, msg, aad or None)
    assert ours.open(nonce, aad, sealed) == msg


@settings(max_examples=150, deadline=None)
@given(key=st.binary(max_size=100), parts=st.lists(st.binary(max_size=90), max_size=4))
def test_hmac_equals_stdlib(key, parts):
    assert crypto.HmacSha256(key).digest(*parts) == hmac.new(key, b"".join(parts), hashlib.sha256).digest()


@settings(max_examples=60, deadline=None)
@given(
    ikm=st.binary(min_size=1, max_size=64),
    salt=st.binary(max_size=40),
    info=st.binary(max_size=40),
    n=st.integers(1, 200),
)
def test_hkdf_equals_cryptography(ikm, salt, info, n):
    assert crypto.hkdf(ikm, salt, info, n) == HKDF(hashes.SHA256(), n, salt or None, info).derive(ikm)


@settings(max_examples=80, deadline=None)
@given(
    key=st.binary(min_size=16, max_size=16),
    aad=st.binary(min_size=1, max_size=20),
    msg=st.binary(min_size=1, max_size=80),
    data=st.data(),
)
def test_ccm_any_bit_flip_is_rejected(key, aad, msg, data):
    ccm = crypto.AesCcm(key)
    nonce = bytes(13)
    sealed = bytearray(ccm.seal(nonce, aad, msg))
    where = data.draw(st.sampled_from(["aad", "sealed"]))
    target = bytearray(aad) if where == "aad" else sealed
    bit = data.draw(st.integers(0, len(target) * 8 - 1))
    target[bit // 8] ^= 1 << (bit % 8)
    try:
        ccm.open(nonce, bytes(target) if where == "aad" else aad, bytes(sealed))
    except crypto.TagMismatch:
        return
    raise AssertionError("a flipped bit was accepted")
