"""docs/protocol.md section 11: the worked example's hex is recomputed here, with the hub's
implementation (cghub.proto over `cryptography`) and with the firmware on both runtimes, so the
document cannot drift from the code."""

from __future__ import annotations

import re

from cghub import proto as hp
from harness import REPO

DOC = REPO / "docs" / "protocol.md"
MARKER = "<!-- worked-example:"
KEY_ID = 1_000_001


def doc_values() -> dict[str, bytes]:
    text = DOC.read_text()
    block = text[text.index(MARKER) :].split("```")[1]
    values = {}
    for line in block.strip().splitlines():
        m = re.fullmatch(r"(\S.*?)\s*=\s*([0-9a-f]+)", line.strip())
        assert m, f"not a 'name = hex' line in the worked example: {line!r}"
        values[m.group(1)] = bytes.fromhex(m.group(2))
    return values


def hub_side(rk: bytes, reading: bytes) -> dict[str, bytes]:
    up, down = hp.DirectionKeys.make(rk, "up"), hp.DirectionKeys.make(rk, "down")
    out = {"root key": rk, "reading": reading}
    for d in ("up", "down"):
        for label, n in (("ccm key", 16), ("ccm iv", 13), ("hmac key", 32)):
            out[f"cg {d} {label}"] = hp.derive(rk, f"cg {d} {label}".encode(), n)
    out["encrypt nonce"] = up.nonce(300)
    out["encrypt datagram"] = hp.seal(up, hp.FLAG_ENCRYPT, KEY_ID, 300, reading)
    out["sign datagram"] = hp.seal(up, 0, KEY_ID, 301, reading)
    out["ack nonce"] = down.nonce(0)
    out["ack payload"] = hp.ack_record(300, set())
    out["ack datagram"] = hp.seal(down, hp.FLAG_ENCRYPT, None, 0, out["ack payload"])
    return out


def test_worked_example_matches_the_hub_implementation():
    doc = doc_values()
    assert doc == hub_side(doc["root key"], doc["reading"])
    assert len(doc["encrypt datagram"]) == 46 and len(doc["ack datagram"]) == 13  # the prose's sizes
    assert doc["encrypt datagram"][:6] == bytes.fromhex("490f4241012c")


FIRMWARE = """
from cellguard import crypto, downlink, message
h = bytes.fromhex
rk, reading = h(RK), h(READING)
derive = lambda label, n: crypto.hkdf(rk, b'cellguard/v1', label, n)
class Counter:
    def next(self):
        raise AssertionError('explicit sequence numbers only')
for d in ('up', 'down'):
    for label, n in (('ccm key', 16), ('ccm iv', 13), ('hmac key', 32)):
        print('cg %s %s' % (d, label), derive(('cg %s %s' % (d, label)).encode(), n).hex())
buf = bytearray(100)
for mode, seq, name in ((message.ENCRYPT, 300, 'encrypt'), (message.SIGN, 301, 'sign')):
    dev = message.Channel(derive, Counter(), key_id=KEY_ID, mode=mode)
    n = dev.seal_into(reading, buf, seq=seq)
    print(name + ' datagram', bytes(buf[:n]).hex())
dev = message.Channel(derive, Counter(), key_id=KEY_ID)
flags, seq, payload = dev.open(h(ACK))   # the device opens the hub's ack
print('ack', seq, payload.hex(), downlink.parse(payload))
"""


def test_worked_example_matches_the_firmware(runtime):
    doc = doc_values()
    script = (
        FIRMWARE.replace("RK", repr(doc["root key"].hex()))
        .replace("READING", repr(doc["reading"].hex()))
        .replace("KEY_ID", str(KEY_ID))
        .replace("ACK", repr(doc["ack datagram"].hex()))
    )
    lines = runtime.run(script).splitlines()
    got = dict(line.rsplit(" ", 1) for line in lines[:-1])
    assert {k: bytes.fromhex(v) for k, v in got.items()} == {k: doc[k] for k in got}
    assert len(got) == 8
    assert lines[-1] == f"ack 0 {doc['ack payload'].hex()} [('ack', 300, 0)]"
