"""cellguard.crypto: published vectors on both runtimes, and equality with `cryptography`."""

import hashlib
import hmac

import pytest
from cellguard import crypto
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from harness import MICROPYTHON_RT, MP_SUPPORT, NO_NATIVE_RT
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


def test_published_vectors(any_vm):
    # all 24 CCM packets (RFC 3610), 7 HMAC cases incl. the truncated case 5 (RFC 4231), 3 HKDF (RFC 5869)
    assert any_vm.run(VECTORS_SCRIPT).strip() == "34"


def test_the_native_loops_are_used_only_where_they_compile(any_vm):
    # The viper loops on the unix port; the plain ones where there is no native emitter (the
    # CircuitPython shim says so too: CircuitPython's default builds have none) and on CPython.
    native = any_vm.name == "micropython"
    assert any_vm.run("from cellguard import crypto\nprint(crypto.NATIVE)").strip() == str(native)
    shim = (MP_SUPPORT / "cpy_shim",)
    assert any_vm.run("from cellguard import crypto\nprint(crypto.NATIVE)", extra_paths=shim).strip() == "False"


def test_from_encrypt_builds_a_working_ccm_on_every_vm(any_vm):
    # AesCcm.from_encrypt is what the plain-Python datagram seal uses: it once called cls.__new__,
    # which exists only on CPython, so encrypted sealing crashed on every build without viper.
    out = any_vm.run(
        "from cellguard import crypto, runtime\n"
        "k = bytes(range(16))\n"
        "c = crypto.AesCcm.from_encrypt(runtime.aes_block(k).encrypt, 8)\n"
        "print(c.seal(bytes(13), b'hdr', b'reading').hex())"
    )
    assert out.strip() == AESCCM(bytes(range(16)), tag_length=8).encrypt(bytes(13), b"reading", b"hdr").hex()


def test_published_vectors_agree_with_cryptography():
    # The vector table itself is checked against an independent implementation, so a mistyped
    # vector cannot make both runtimes agree on a wrong answer.
    from crypto_vectors import RFC3610, RFC4231, RFC5869

    h = bytes.fromhex
    for key, nonce, aad, pt, expected, tlen in RFC3610:
        assert AESCCM(h(key), tag_length=tlen).encrypt(h(nonce), h(pt), h(aad)) == h(expected)
    for key, data, mac in RFC4231:
        assert hmac.new(h(key), h(data), hashlib.sha256).digest()[: len(h(mac))] == h(mac)
    for ikm, salt, info, n, prk, okm in RFC5869:
        assert hmac.new(h(salt) or bytes(32), h(ikm), hashlib.sha256).digest() == h(prk)
        assert HKDF(hashes.SHA256(), n, h(salt) or None, h(info)).derive(h(ikm)) == h(okm)


def test_ccm_longer_than_the_preallocated_keystream(any_vm):
    # Messages longer than max_len are processed in chunks; the result must not change.
    out = any_vm.run(
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


# ---- the same properties on the MicroPython unix port ------------------------------------------
# The hypothesis tests above run the plain loops on CPython; a device runs the viper paths of
# crypto.py and _fastxor.py, or (a build without a native emitter, CircuitPython's default) the
# plain loops on its own VM. Here hypothesis draws the cases on the host, ONE MicroPython process
# per variant computes them all, and `cryptography` checks every answer.
MP_CROSS = """
import sys
from cellguard import crypto, message
h = bytes.fromhex
class Counter:
    def next(self):
        raise AssertionError('explicit sequence numbers only')
def channel(root, mode, tag, send):
    def derive(label, n):
        return crypto.hkdf(root, b'cellguard/v1', label, n)
    kw = {'ccm_tag': tag} if mode == message.ENCRYPT else {'hmac_tag': tag}
    return message.Channel(derive, Counter(), key_id=None if send == 'down' else KID, mode=mode, send=send, **kw)
out = bytearray(600)
for line in open(sys.argv[1]):
    f = line.split()
    kind, f = f[0], [h(x) if x != '-' else b'' for x in f[1:]]
    if kind == 'ccm':
        key, nonce, aad, msg, tl = f
        ccm = crypto.AesCcm(key, tag_len=tl[0])
        sealed = ccm.seal(nonce, aad, msg)
        assert ccm.open(nonce, aad, sealed) == msg
        print(sealed.hex() or '-')
    elif kind == 'hmac':
        print(crypto.hmac_sha256(f[0], f[1]).hex())
    elif kind == 'hkdf':
        print(crypto.hkdf(f[0], f[1], f[2], f[3][0]).hex())
    else:  # a datagram: seal on the device side, then every single-bit flip must be rejected
        root, kid, seq, mode, tag, ctrl, payload = f
        KID = int.from_bytes(kid, 'big')
        dev = channel(root, mode[0], tag[0], 'up')
        n = dev.seal_into(payload, out, ctrl[0] == 1, seq=int.from_bytes(seq, 'big'))
        dg = bytes(out[:n])
        hub = channel(root, mode[0], tag[0], 'down')
        accepted = 0
        for bit in range(n * 8):
            bad = bytearray(dg)
            bad[bit // 8] ^= 1 << (bit % 8)
            try:
                hub.open(bytes(bad))
                accepted += 1
            except (message.BadTag, message.Malformed):
                pass
        flags, s, got = hub.open(dg)
        print(dg.hex(), accepted, got == payload)
"""

_CCM = st.tuples(
    st.just("ccm"),
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=13, max_size=13),
    st.binary(max_size=40),
    st.binary(max_size=300),
    st.sampled_from([4, 8, 12, 16]),
)
_HMAC = st.tuples(st.just("hmac"), st.binary(max_size=100), st.binary(max_size=200))
_HKDF = st.tuples(
    st.just("hkdf"), st.binary(min_size=1, max_size=64), st.binary(max_size=40), st.binary(max_size=40),
    st.integers(1, 200),
)
_DATAGRAM = st.tuples(
    st.just("dg"),
    st.binary(min_size=32, max_size=32),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.sampled_from([0, 1]),
    st.integers(0, 4),  # tag length, by index into the mode's allowed lengths
    st.booleans(),
    st.binary(max_size=48),
)


def _collect(strategy, n: int) -> list:
    cases: list = []

    @settings(max_examples=n, deadline=None, database=None)
    @given(strategy)
    def draw(case):
        cases.append(case)

    draw()
    return cases


def _expected(case) -> str:
    kind = case[0]
    if kind == "ccm":
        _, key, nonce, aad, msg, tl = case
        return AESCCM(key, tag_length=tl).encrypt(nonce, msg, aad or None).hex() or "-"
    if kind == "hmac":
        return hmac.new(case[1], case[2], hashlib.sha256).hexdigest()
    _, ikm, salt, info, n = case
    return HKDF(hashes.SHA256(), n, salt or None, info).derive(ikm).hex()


def _line(case) -> str:
    def hx(b: bytes) -> str:
        return b.hex() or "-"

    if case[0] == "ccm":
        return " ".join(["ccm", *map(hx, case[1:5]), bytes([case[5]]).hex()])
    if case[0] == "hmac":
        return f"hmac {hx(case[1])} {hx(case[2])}"
    if case[0] == "hkdf":
        return " ".join(["hkdf", *map(hx, case[1:4]), bytes([case[4]]).hex()])
    _, root, kid, seq, mode, ti, ctrl, payload = case
    tag = (8, 12, 16, 8, 8)[ti] if mode else (10, 16, 32, 16, 12)[ti]
    return " ".join(["dg", hx(root), kid.to_bytes(4, "big").hex(), seq.to_bytes(4, "big").hex(),
                     f"{mode:02x}", f"{tag:02x}", f"{int(ctrl):02x}", hx(payload)])  # fmt: skip


@pytest.mark.parametrize("vm", [MICROPYTHON_RT, NO_NATIVE_RT], ids=lambda rt: rt.name)
def test_micropython_crypto_equals_cryptography_on_hypothesis_cases(vm, tmp_path):
    from cghub import proto as hp

    prims = _collect(_CCM, 110) + _collect(_HMAC, 50) + _collect(_HKDF, 40)
    dgrams = _collect(_DATAGRAM, 40)
    cases = prims + dgrams
    path = tmp_path / "cases.txt"
    path.write_text("\n".join(_line(c) for c in cases) + "\n")
    out = vm.run(MP_CROSS, args=(path,), heapsize="256K", timeout=300).splitlines()
    assert len(out) == len(cases)
    for case, got in zip(prims, out, strict=False):
        assert got == _expected(case), case
    modes = set()
    for case, line in zip(dgrams, out[len(prims) :], strict=True):
        dg_hex, accepted, roundtrip = line.split()
        fields = _line(case).split()
        root, kid, seq = case[1], case[2], case[3]
        mode, tag = case[4], int(fields[5], 16)
        keys = hp.DirectionKeys.make(root, "up", ccm_tag=tag if mode else 8, hmac_tag=16 if mode else tag)
        flags = (hp.FLAG_ENCRYPT if mode else 0) | (hp.FLAG_CONTROL if case[6] else 0)
        assert bytes.fromhex(dg_hex) == hp.seal(keys, flags, kid, seq, case[7]), case
        assert accepted == "0", f"{accepted} single-bit flips accepted: {case}"
        assert roundtrip == "True"
        modes.add(mode)
    assert modes == {0, 1}  # both modes really met on the device side
