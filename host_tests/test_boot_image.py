"""Images: cellguard image (build, sign with imgtool, verify, info) and every rejection reason, on the
device's verifier, while the previous image keeps running."""

import json
import struct

import pytest
from boot_kit import device_script, session_kit
from cgboot import image
from cgdev import image as image_tool
from hypothesis import given, settings
from hypothesis import strategies as st


@pytest.fixture(scope="session")
def kit(tmp_path_factory):
    return session_kit(tmp_path_factory)


def trusted_keys(kit):
    return [image.TrustedKey(*image_tool.public_key(kit.keys[k])) for k in ("ed_a", "ed_b", "ec")]


# The device verifies an image from a buffer (what the loader mounts) or streamed from its slot file
# (an update's candidate): one parser and verifier, so every rejection must be the same for both.
SOURCES = ("buffer", "file")


def verify_as(source: str, data: bytes, keys, **kw):
    if source == "buffer":
        return image.verify(data, keys, **kw)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/slot.img"
        with open(path, "wb") as f:
            f.write(data)
        return image.verify_file(path, keys, chunk=100, **kw)  # 100: chunks end off every boundary


def test_imgtool_verify_accepts_every_image(kit):
    for name, path in kit.images.items():
        key = kit.keys[{"v2": "ed_b", "v2_ec": "ec", "rogue": "rogue"}.get(name, "ed_a")]
        assert "correctly validated" in image_tool.imgtool_verify(key, path), name


def test_cli_verify_info_and_trust(kit, tmp_path, capsys):
    assert image_tool.main(["verify", "-k", str(kit.keys["ec"]), str(kit.images["v2_ec"])]) == 0
    assert image_tool.main(["info", "--json", str(kit.images["v2"])]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["version"] == "1.1.0+0"
    assert info["security_counter"] == (1 << 24) | (1 << 16)  # imgtool's -s auto
    assert set(info["tlvs"]) == {"SEC_CNT", "SHA256", "KEYHASH", "ED25519"}
    # The device's verifier rejects an image signed by a key it does not trust.
    assert (
        image_tool.main(
            ["verify", "-k", str(kit.keys["rogue"]), "-k", str(kit.keys["ed_a"]), str(kit.images["rogue"])]
        )
        == 1
    )
    out = tmp_path / "trusted.py"
    assert image_tool.main(["trust", str(kit.keys["ed_a"]), str(kit.keys["ec"]), "-o", str(out)]) == 0
    ns: dict = {}
    exec(out.read_text(), ns)
    assert [row[0] for row in ns["KEYS"]] == ["ed25519", "ecdsa-p256"]


def test_device_verifier_accepts_both_algorithms(kit):
    keys = trusted_keys(kit)
    for name in ("v1", "v2", "v2_ec"):
        info = image.verify(kit.images[name].read_bytes(), keys)
        assert info.version_str().startswith({"v1": "1.0.0", "v2": "1.1.0", "v2_ec": "1.1.0"}[name])


def tlv_spans(buf: bytes):
    """(start, end) of every TLV header and value, and the two info headers."""
    hdr_size, img_size, _v, prot_end, _ = image.parse(buf)
    spans = []
    off = hdr_size + img_size
    while off < len(buf):
        magic, total = struct.unpack_from("<HH", buf, off)
        spans.append((off, off + 4))
        end = off + total
        off += 4
        while off < end:
            _t, n = struct.unpack_from("<HH", buf, off)
            spans.append((off, off + 4 + n))
            off += 4 + n
    return spans


def flipped(buf: bytes, pos: int, bit: int = 0) -> bytes:
    out = bytearray(buf)
    out[pos] ^= 1 << bit
    return bytes(out)


@pytest.mark.parametrize("source", SOURCES)
def test_every_header_and_tlv_bit_flip_is_rejected(kit, source):
    # One flipped bit anywhere in the header or in any TLV (header or value) must be refused.
    keys = trusted_keys(kit)
    buf = kit.images["v1"].read_bytes()
    positions = list(range(32)) + [p for a, b in tlv_spans(buf) for p in range(a, b)]
    for pos in positions:
        for bit in (0, 7):
            bad = flipped(buf, pos, bit)
            with pytest.raises(image.Rejected):
                verify_as(source, bad, keys)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_body_bit_flip_is_a_hash_mismatch(kit, data):
    buf = kit.images["v2_ec"].read_bytes()
    hdr, size = image.parse(buf)[:2]
    pos = data.draw(st.integers(hdr, hdr + size - 1))
    with pytest.raises(image.Rejected) as err:
        image.verify(flipped(buf, pos, data.draw(st.integers(0, 7))), trusted_keys(kit))
    assert err.value.reason == image.HASH_MISMATCH


@pytest.mark.parametrize("source", SOURCES)
def test_oversized_for_the_slot(kit, source):
    buf = kit.images["v1"].read_bytes()
    with pytest.raises(image.Rejected) as err:
        verify_as(source, buf, trusted_keys(kit), max_size=len(buf) - 1)
    assert err.value.reason == image.OVERSIZED


def rejection_cases(buf: bytes) -> dict[str, tuple[bytes, str]]:
    hdr_size, img_size, _v, prot_end, tlvs = image.parse(buf)

    def tlv_len_set(tlv_type: int, n: int) -> bytes:
        out = bytearray(buf)
        struct.pack_into("<H", out, tlvs[tlv_type][0] - 2, n)
        return bytes(out)

    def value_flip(tlv_type: int) -> bytes:
        return flipped(buf, tlvs[tlv_type][0] + 3)

    return {
        "bad_magic": (flipped(buf, 0), image.BAD_MAGIC),
        "header_flip": (flipped(buf, 20), image.HASH_MISMATCH),  # version major
        "body_flip": (flipped(buf, hdr_size + img_size // 2), image.HASH_MISMATCH),
        "sec_cnt_flip": (value_flip(image.TLV_SEC_CNT), image.HASH_MISMATCH),
        "sha_tlv_flip": (value_flip(image.TLV_SHA256), image.HASH_MISMATCH),
        "keyhash_flip": (value_flip(image.TLV_KEYHASH), image.UNKNOWN_KEY),
        "signature_flip": (value_flip(image.TLV_ED25519), image.BAD_SIGNATURE),
        "truncated_tail": (buf[:-10], image.TRUNCATED),
        "truncated_half": (buf[: len(buf) // 2], image.TRUNCATED),
        "truncated_header": (buf[:20], image.TRUNCATED),
        "tlv_len_out_of_bounds": (tlv_len_set(image.TLV_SHA256, 0x7FFF), image.TLV_OUT_OF_BOUNDS),
        "protected_tlv_len_out_of_bounds": (tlv_len_set(image.TLV_SEC_CNT, 0x100), image.TLV_OUT_OF_BOUNDS),
        "trailing_bytes": (buf + b"\x00", image.MALFORMED),
    }


@pytest.mark.parametrize("source", SOURCES)
def test_each_rejection_reason_from_a_buffer_and_from_a_file(kit, source):
    keys = trusted_keys(kit)
    cases = rejection_cases(kit.images["v2"].read_bytes())
    cases["unknown_key"] = (kit.images["rogue"].read_bytes(), image.UNKNOWN_KEY)
    got = {}
    for name, (data, _) in cases.items():
        try:
            verify_as(source, data, keys)
            got[name] = "ACCEPTED"
        except image.Rejected as e:
            got[name] = e.reason
    old = kit.images["old"].read_bytes()
    counter = image.verify(kit.images["v2"].read_bytes(), keys).security_counter
    with pytest.raises(image.Rejected) as err:
        verify_as(source, old, keys, min_counter=counter)
    got["downgrade"] = err.value.reason
    assert got == {**{name: reason for name, (_, reason) in cases.items()}, "downgrade": image.DOWNGRADE}
    assert verify_as(source, kit.images["v2"].read_bytes(), keys).digest == image.verify(
        kit.images["v2"].read_bytes(), keys).digest


def test_a_missing_or_shrinking_file_is_truncated(kit, tmp_path):
    keys = trusted_keys(kit)
    with pytest.raises(image.Rejected) as err:
        image.verify_file(str(tmp_path / "none.img"), keys)
    assert err.value.reason == image.TRUNCATED
    # The size is taken at open; a file cut while it is hashed is refused, never read past its end.
    path = tmp_path / "slot.img"
    data = kit.images["v1"].read_bytes()
    path.write_bytes(data)

    class Cut:
        rewinds = 0

        def __init__(self):
            self.f = open(path, "rb")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def seek(self, *a):
            if a == (0,):
                self.rewinds += 1
                if self.rewinds == 2:  # the parser read the header; now the hash starts: cut the file
                    self.f.close()
                    path.write_bytes(data[: len(data) // 2])
                    self.f = open(path, "rb")
            return self.f.seek(*a)

    cut = Cut()
    with pytest.raises(image.Rejected) as err:
        image._verify(image._File(cut, 100), keys, 0, None)
    cut.f.close()
    assert (err.value.reason, err.value.detail) == (image.TRUNCATED, "file shrank while hashed")


_REJECT = """
import hashlib
from cgboot import update
dev = bootsim.new_device(keys, imgs)
cases = json.loads(%r)
for name in cases:
    with open(cases[name], 'rb') as f:
        data = f.read()
    dev.mount()
    w = update.UpdateWriter(dev.slots())
    try:
        off = w.offer(len(data), hashlib.sha256(data).digest())
        while off < len(data):
            off = w.write(off, data[off:off + 512])
        w.finish()
        reason = 'ACCEPTED'
    except image.Rejected as e:
        reason = e.reason
    except update.UpdateError as e:
        reason = e.reason
    dev.reboot()
    dev.power_on(lambda version, st: None)   # the previous image must still boot, not on trial
    dev.reboot()
    print(name, reason, dev.boots[-1][0], dev.boots[-1][1])
dev.mount()
try:
    update.UpdateWriter(dev.slots()).offer(200000, bytes(32))
    print('oversized_offer ACCEPTED')
except update.UpdateError as e:
    print('oversized_offer', e.reason, 'v1', False)
print('bricked', dev.bricked, 'unverified', dev.unverified)
"""


def test_each_rejection_has_its_reason_and_v1_keeps_running(kit, tmp_path, mp):
    cases = rejection_cases(kit.images["v2"].read_bytes())
    files = {}
    for name, (data, _) in cases.items():
        files[name] = str(tmp_path / f"{name}.img")
        (tmp_path / f"{name}.img").write_bytes(data)
    files["unknown_key"] = str(kit.images["rogue"])
    files["downgrade"] = str(kit.images["old"])
    expected = {name: reason for name, (_, reason) in cases.items()}
    expected.update(unknown_key=image.UNKNOWN_KEY, downgrade=image.DOWNGRADE, oversized_offer=image.OVERSIZED)
    from harness import run_micropython

    script = device_script(kit, ("v1",), _REJECT % json.dumps(files))
    lines = run_micropython(script, heapsize="4M", extra_paths=(kit.lib,)).strip().splitlines()
    got = {}
    for line in lines[:-1]:
        name, reason, running, trial = line.split()
        assert (running, trial) == ("v1", "False"), line
        got[name] = reason
    assert got == expected
    assert lines[-1] == "bricked 0 unverified 0"


@pytest.mark.parametrize("source", SOURCES)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_parser_never_fails_other_than_rejected(kit, source, data):
    # Arbitrary damage (overwrites, cuts, insertions) anywhere: the verifier raises Rejected, never
    # an IndexError/struct.error, and never accepts a changed image.
    buf = bytearray(kit.images["v1"].read_bytes())
    original = bytes(buf)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["set", "cut", "insert", "u16"]))
        pos = data.draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "set" and buf:
            buf[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del buf[pos : pos + data.draw(st.integers(1, 64))]
        elif op == "insert":
            buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "u16" and pos + 2 <= len(buf):
            struct.pack_into("<H", buf, pos, data.draw(st.sampled_from([0, 1, 3, 4, 0x7FFF, 0xFFFF])))
    if bytes(buf) == original:
        return
    with pytest.raises(image.Rejected):
        verify_as(source, bytes(buf), trusted_keys(kit))


def test_release_packs_the_application_and_boots_it(kit, tmp_path):
    # `release` signs firmware/lib without the trusted part; the image boots and `cellguard`
    # is imported from the verified ROMFS, not from the filesystem.
    import os
    import shutil

    from harness import FIRMWARE_LIB, run_micropython

    img = tmp_path / "release.img"
    # -march=x64: the unix port's CPU, for the modules with viper code (the crypto hot path)
    release = ["release", "-k", str(kit.keys["ed_b"]), "-v", "2.0.0", "-o", str(img), "--march", "x64"]
    assert image_tool.main(release) == 0
    fs = tmp_path / "fs"
    assert image_tool.main(["install", "--fs", str(fs), "-k", str(kit.keys["rogue"]), str(img)]) == 1
    assert image_tool.main(["install", "--fs", str(fs), "-k", str(kit.keys["ed_b"]), str(img)]) == 0
    lib = tmp_path / "lib"
    shutil.copytree(FIRMWARE_LIB / "cgboot", lib / "cgboot")
    shutil.copy(kit.lib / "boot_trusted.py", lib / "cgboot" / "trusted_keys.py")
    script = (
        "import sys\n"
        "sys.path[:] = [p for p in sys.path if 'firmware/lib' not in p]\n"  # only the image has cellguard
        "from cgboot import loader\n"
        "r = loader.boot_device()\n"
        "import cellguard, cellguard.runtime\n"
        "print(cellguard.__file__, r.info.version_str(), 'cgboot' in [m for m in __import__('os').listdir('/app')])\n"
    )
    env = {**os.environ, "CELLGUARD_FS": str(fs)}
    out = run_micropython(script, extra_paths=(lib,), env=env, heapsize="256K")  # the whole app is in RAM
    assert out.strip().splitlines()[-1] == "/app/cellguard/__init__.mpy 2.0.0+0 False"


def test_cli_refuses_a_downgrade_and_a_missing_file(kit, tmp_path):
    counter = (1 << 24) | (1 << 16)  # v2's
    args = ["verify", "-k", str(kit.keys["ed_a"]), "--min-counter", str(counter), str(kit.images["v1"])]
    assert image_tool.main(args) == 1  # v1 is older than the floor
    assert image_tool.main(["build", str(tmp_path / "nope"), "-o", str(tmp_path / "x.romfs")]) == 1


def test_cli_info_on_a_missing_or_foreign_file_says_so(tmp_path):
    import subprocess
    import sys


    junk = tmp_path / "junk.img"
    junk.write_bytes(b"not an image at all" * 10)
    for path, says in ((tmp_path / "missing.img", "No such file or directory"), (junk, "is not an image")):
        proc = subprocess.run([sys.executable, "-m", "cgdev.image", "info", str(path)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1, proc.stderr
        assert str(path) in proc.stderr and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
