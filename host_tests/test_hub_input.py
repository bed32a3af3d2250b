"""Bad input costs the hub little and is reported in aggregate: size limit, log lines per interval,
CHUNK REQ with nothing published, malformed control bodies."""

import logging

from cellguard import wire
from cghub import proto as hp
from cghub import updates as hub_updates
from hubkit import device_channel, lines, make_hub


def test_a_datagram_longer_than_any_device_sends_is_too_long(tmp_path):
    hub = make_hub(tmp_path)
    dev = device_channel()
    overhead = dev.overhead(0)
    at_limit = dev.seal(b"a" * (hp.MAX_UPLINK - overhead))
    assert len(at_limit) == hp.MAX_UPLINK == wire.MAX_DATAGRAM
    assert len(hub.handle(at_limit)) == 1
    for n in (hp.MAX_UPLINK - overhead + 1, 65507 - overhead - 1):
        assert hub.handle(dev.seal(b"b" * n)) == []
    assert hub.counters["rejected.too long"] == 2
    assert [len(x["payload_hex"]) // 2 for x in lines(hub)] == [hp.MAX_UPLINK - overhead]  # nothing else written
    assert hub.store.device(dev.key_id)["failures"] == 0  # never verified, so not a forgery attempt


def test_rejections_are_logged_per_reason_and_interval_not_per_datagram(tmp_path, caplog):
    hub = make_hub(tmp_path)
    dev = device_channel()
    caplog.set_level(logging.INFO, logger="cellguard.hub")
    for i in range(500):
        bad = bytearray(dev.seal(b"x%d" % i))
        bad[-1] ^= 1
        hub.handle(bytes(bad))
        hub.handle(b"\x41")
    hub.rejects.flush(force=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) <= 2, warnings[:5]  # the first interval's line, then the forced one
    assert "bad tag" in warnings[-1] and "truncated" in warnings[-1]
    assert hub.counters["rejected.bad tag"] == 500 and hub.counters["rejected.truncated"] == 500


def test_chunk_req_with_nothing_published_is_not_answered(tmp_path):
    hub = make_hub(tmp_path)
    hub.update_provider = hub_updates.provider(hub.store)
    dev = device_channel()
    req = bytes([wire.CTRL_CHUNK_REQ]) + (0).to_bytes(4, "big") + (256).to_bytes(2, "big")
    assert hub.handle(dev.seal(req, control=True)) == []  # protocol.md section 4: "else nothing"
    assert hub.counters["chunk_req_unanswered"] == 1


def test_malformed_dack_confirms_nothing(tmp_path):
    hub = make_hub(tmp_path)
    dev = device_channel()
    hub.store.queue_command(dev.key_id, hp.reboot_record())
    replies = hub.handle(dev.seal(b"r"))
    assert len(replies) == 2  # ack, command datagram under downlink sequence 1
    # A DACK body of 5 bytes is not a sequence number: nothing is confirmed by reading part of it.
    assert hub.handle(dev.seal(bytes([wire.CTRL_DACK, 0, 0, 0, 1, 9]), control=True)) == []
    assert [c["state"] for c in hub.store.commands(dev.key_id)] == ["sent"]
    hub.handle(dev.seal(bytes([wire.CTRL_DACK, 1]), control=True))
    assert [c["state"] for c in hub.store.commands(dev.key_id)] == ["done"]
