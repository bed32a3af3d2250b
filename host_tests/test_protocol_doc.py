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


def _table_row(code: str) -> list[str]:
    """The cells of the table row of docs/protocol.md whose first cell is `code` (e.g. 0x51)."""
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == f"`{code}`":
            return cells
    raise AssertionError(f"no row for {code} in protocol.md")


def test_ota_records_match_the_document_and_both_implementations():
    # Section 4's sizes and section 5's bodies for the over-the-air records, against the hub's
    # encoders and the firmware's decoders (CPython here; test_ota_field runs them on the unix port).
    from cellguard import downlink, ota

    iid, data = bytes.fromhex("c92ec31b"), bytes(range(100))
    offer = hp.update_offer_record(1, 4, 2, 65856, bytes(range(32)), 1024)
    assert _table_row("0x40")[3] == "43" == str(len(offer))
    assert downlink.parse(offer) == [("update_offer", 1, 4, 2, 65856, bytes(range(32)), 1024)]
    rec = hp.image_chunk_record(iid, 976, data)
    assert _table_row("0x51")[3] == "11 + n" and len(rec) == 11 + len(data)
    assert downlink.parse(rec) == [("image_chunk", iid, 976, data)]
    rec = hp.no_image_record(iid, hp.NO_IMAGE_SUPERSEDED)
    assert _table_row("0x52")[3] == str(len(rec)) == "6"
    assert downlink.parse(rec + offer)[0] == ("no_image", iid, 2)
    req = ota.chunk_request_payload(976, 976, 4, iid)
    assert "u32 offset, u16 chunk length, u8 count, 4-byte image id" in _table_row("0x04")[2]
    assert req == hp.chunk_request(976, 976, 4, iid) and len(req) == 1 + 4 + 2 + 1 + 4
    assert hp.parse_chunk_request(req) == (976, 976, 4, iid)
    status = ota.status_payload(ota.STATUS_SUPERSEDED, iid, "holds 1.4.0")
    assert "u8 status (1 = installed, 2 = refused, 3 = superseded" in _table_row("0x05")[2]
    assert hp.parse_update_status(status) == (hp.UPDATE_SUPERSEDED, iid, "holds 1.4.0")
