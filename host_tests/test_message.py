"""cellguard.message: seal/open, replay window, sequence reservation across power cuts."""

import pytest
from cellguard import message, replay, wire
from hypothesis import given, settings
from hypothesis import strategies as st

PAIR = """
from cellguard import message, crypto, wire
class Counter:
    def __init__(self): self.n = 0
    def next(self):
        self.n += 1
        return self.n - 1
root = bytes(range(32))
derive = lambda label, n: crypto.hkdf(root, b'cellguard/v1', label, n)
def pair(mode, key_id=1000000):
    dev = message.Channel(derive, Counter(), key_id=key_id, mode=mode, send='up')
    hub = message.Channel(derive, Counter(), key_id=None, mode=mode, send='down')
    return dev, hub
"""

ROUNDTRIP = PAIR + """
for mode in (message.ENCRYPT, message.SIGN):
    dev, hub = pair(mode)
    got = []
    for i in range(40):
        d = dev.seal(b'reading %d' % i)
        flags, seq, p = hub.open(d)
        got.append(p == b'reading %d' % i and seq == i)
    # duplicates and forgeries
    try:
        hub.open(d); print('dup accepted')
    except message.Replayed as e:
        assert e.duplicate
    bad = bytearray(d); bad[-1] ^= 1
    try:
        hub.open(bytes(bad)); print('forgery accepted')
    except message.BadTag:
        pass
    # the reply direction uses other keys: an uplink reflected back to the device fails
    try:
        dev.open(d); print('reflection accepted')
    except message.Refused:  # it carries a key id, which no downlink does: refused before its tag
        pass
    r = hub.seal(b'\\x01\\x05')
    assert dev.open(r)[2] == b'\\x01\\x05'
    print(mode, all(got), len(d) - len(b'reading 39'))
"""


def test_roundtrip_replay_forgery_reflection(runtime):
    lines = runtime.run(ROUNDTRIP).split("\n")
    # overhead with a key id of a million (3 bytes) and seq < 256: 1 + 3 + 1 + tag
    assert lines[0] == "1 True 13"
    assert lines[1] == "0 True 21"


def test_overhead_at_the_protocol_budget(runtime):
    out = runtime.run(PAIR + "dev, hub = pair(message.ENCRYPT)\nprint(dev.overhead(65535), dev.overhead(300))")
    assert out.split() == ["14", "14"]


def test_replay_window_properties():
    w = replay.ReplayWindow(32)
    for s in (5, 3, 9, 4):
        assert w.check(s) == replay.NEW
        w.update(s)
    assert w.check(5) == replay.DUPLICATE
    assert w.check(6) == replay.NEW
    w.update(100)
    assert w.check(9) == replay.TOO_OLD
    assert w.check(68) == replay.NEW  # 100 - 1 - 31
    assert w.check(67) == replay.TOO_OLD
    again = replay.ReplayWindow.from_bytes(w.to_bytes(), 32)
    assert (again.highest, again.bits) == (w.highest, w.bits)


def _derive(label, n):
    from cellguard import crypto

    return crypto.hkdf(bytes(range(32)), b"cellguard/v1", label, n)


class _Counter:
    def __init__(self):
        self.n = 0

    def next(self):
        self.n += 1
        return self.n - 1


@settings(max_examples=120, deadline=None)
@given(
    payload=st.binary(max_size=64),
    mode=st.sampled_from([message.ENCRYPT, message.SIGN]),
    control=st.booleans(),
    unlocked=st.booleans(),
    start=st.integers(0, 2**32 - 2),
    data=st.data(),
)
def test_open_seal_and_any_bit_flip(payload, mode, control, unlocked, start, data):
    dev = message.Channel(_derive, _Counter(), key_id=data.draw(st.integers(0, 2**32 - 1)), mode=mode)
    dev.set_mode(mode, unlocked)
    dev.counter.n = start
    hub = message.Channel(_derive, _Counter(), mode=mode, send="down")
    d = dev.seal(payload, control=control)
    flags, seq, got = hub.open(d)
    assert (got, seq) == (payload, start)
    assert bool(flags & wire.FLAG_CONTROL) == control and bool(flags & wire.FLAG_UNLOCKED) == unlocked
    hub2 = message.Channel(_derive, _Counter(), mode=mode, send="down")
    bit = data.draw(st.integers(0, len(d) * 8 - 1))
    bad = bytearray(d)
    bad[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises((message.BadTag, message.Malformed)):
        hub2.open(bytes(bad))
    assert hub2.window.highest == -1  # nothing moved


SEQ_CUTS = """
import os
import lfsmount
from flashsim import PowerCut
from cellguard import seqstore, atomic, runtime
flash = lfsmount.fresh()
atomic.ensure_dir('/fl/state')
atomic.write_atomic('/fl/state/msg_seq', b'0')
used = set()
cut = 0
cuts_hit = 0
while cut < CUTS:
    c = seqstore.SequenceCounter('/fl/state/msg_seq', step=4)
    flash.arm(cut % 7, torn=(cut % 2 == 1))
    try:
        for _ in range(12):
            n = c.next()
            assert n not in used, ('repeated', n)
            used.add(n)
    except PowerCut:
        cuts_hit += 1
    flash = lfsmount.reboot(flash)
    cut += 1
print(cuts_hit, len(used), max(used))
"""


def test_sequence_never_repeats_across_power_cuts(mp):
    hit, used, top = mp.run(SEQ_CUTS.replace("CUTS", "40"), heapsize="2M").split()
    assert int(hit) >= 30  # the cuts really landed inside reservations
    assert int(used) > 40


def test_sequence_refuses_without_reservation_file(runtime, tmp_path):
    out = runtime.run(
        "from cellguard import seqstore\n"
        "try:\n seqstore.SequenceCounter('%s/none')\nexcept seqstore.StateCorrupt:\n print('refused')\n"
        "open('%s/s','w').write('4294967295')\n"
        "c = seqstore.SequenceCounter('%s/s')\nprint(c.next())\n"
        "try:\n c.next()\nexcept seqstore.SequenceExhausted:\n print('exhausted')\n" % ((tmp_path,) * 3)
    )
    assert out.split() == ["refused", "4294967295", "exhausted"]


INTEROP = PAIR + """
import sys
out = []
for kid in (None, 7, 70000, 1000001, 2**32 - 1):
    for seq in (0, 255, 256, 65536, 2**24, 2**32 - 1):
        for tag in (8, 16):
            for mode in (message.ENCRYPT, message.SIGN):
                ch = message.Channel(derive, Counter(), key_id=kid, mode=mode, ccm_tag=tag, hmac_tag=tag + 2)
                for n in (0, 15, 16, 33):
                    buf = bytearray(80)
                    m = ch.seal_into(bytes(range(n)), buf, control=(n == 15), seq=seq)
                    print(bytes(buf[:m]).hex())
"""


def test_firmware_datagrams_equal_the_hub_implementation(runtime):
    # Byte-for-byte equality with hubproto (written from docs/protocol.md over `cryptography`), on
    # the native (viper) path and the pure-Python path, for every header length.
    from cghub import proto as hp

    got = runtime.run(INTEROP).split()
    want = []
    root = bytes(range(32))
    for kid in (None, 7, 70000, 1000001, 2**32 - 1):
        for seq in (0, 255, 256, 65536, 2**24, 2**32 - 1):
            for tag in (8, 16):
                keys = hp.DirectionKeys.make(root, "up", ccm_tag=tag, hmac_tag=tag + 2)
                for mode in (message.ENCRYPT, message.SIGN):
                    for n in (0, 15, 16, 33):
                        flags = (hp.FLAG_ENCRYPT if mode else 0) | (hp.FLAG_CONTROL if n == 15 else 0)
                        want.append(hp.seal(keys, flags, kid, seq, bytes(range(n))).hex())
    assert got == want


def test_tag_lengths_outside_the_protocol_are_refused(runtime):
    # protocol.md section 1: CCM tags 8, 12 or 16; HMAC tags 10..32. CCM itself would take a 4-byte
    # tag, whose forgery bound (v / 2^32) the document's limits do not cover.
    out = runtime.run(
        PAIR
        + """
for kw in ({'ccm_tag': 4}, {'ccm_tag': 10}, {'ccm_tag': 14}, {'hmac_tag': 9}, {'hmac_tag': 33}):
    try:
        message.Channel(derive, Counter(), key_id=1, **kw)
        print('accepted', kw)
    except ValueError:
        print('refused')
for kw in ({'ccm_tag': 8}, {'ccm_tag': 12}, {'ccm_tag': 16}, {'hmac_tag': 10}, {'hmac_tag': 32}):
    message.Channel(derive, Counter(), key_id=1, **kw)
print('ok')
"""
    )
    assert out.split() == ["refused"] * 5 + ["ok"]


STRICT_DOWNLINK = PAIR + """
dev, hub = pair(message.ENCRYPT)
def attempt(ch, control=False):
    try:
        dev.open(ch.seal(b'\\x00\\x00', control=control))
        return 'accepted'
    except message.Refused:
        return 'refused'
    except message.MessageError as e:
        return type(e).__name__
kid = message.Channel(derive, Counter(), key_id=7, mode=message.ENCRYPT, send='down')
unl = message.Channel(derive, Counter(), key_id=None, mode=message.ENCRYPT, send='down', unlocked=True)
sgn = message.Channel(derive, Counter(), key_id=None, mode=message.SIGN, send='down')
print(attempt(kid), attempt(hub, control=True), attempt(unl), attempt(sgn), attempt(hub), dev.failures)
dev.set_mode(message.SIGN)  # after a CONFIG mode switch, datagrams sealed before it are acked in encrypt
sgn.counter.n, hub.counter.n = 10, 20
print(attempt(sgn), attempt(hub))
"""


def test_device_refuses_downlinks_no_hub_sends(runtime):
    """protocol.md section 1: downlinks carry no key id, C = 0, U = 0, and the device's own mode."""
    out = runtime.run(STRICT_DOWNLINK).split()
    assert out == ["refused", "refused", "refused", "refused", "accepted", "0", "accepted", "accepted"]
