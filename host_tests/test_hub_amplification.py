"""No amplification (protocol.md section 4): a captured authentic datagram replayed from a foreign
address draws no more bytes there than it brought, for every kind; duplicates of a key are answered
at most once a second; a device whose address changed still gets its ack."""

from cghub import proto as hp
from cghub import server as hubmod
from cghub import updates as hub_updates
from cgsim import fleet as fl
from hubkit import KINDS, device_channel, make_hub, replay_ratios

KID = 900_001


def _image() -> bytes:
    image = bytearray(4096)
    image[0:4] = (0x96F3B83D).to_bytes(4, "little")
    return bytes(image)


def test_replays_from_a_foreign_address_draw_no_more_than_they_bring(tmp_path):
    hub = make_hub(tmp_path, root=fl.root_key(b"amp", KID), key_id=KID)
    kids = [KID + i for i in range(len(KINDS))]
    for kid in kids[1:]:
        hub.store.register_device(kid, "amp-%d" % kid, fl.root_key(b"amp", kid))
    hub_updates.publish(hub.store, _image(), kids, chunk=1024)  # CHUNK REQ answered with 1 KiB
    hub.update_provider = hub_updates.provider(hub.store)
    for kid in kids:
        hub.store.queue_command(kid, hp.config_record(1, 600))  # a pending command rides every answer
    with hubmod.HubServer(hub) as server:
        ratios = replay_ratios(server.port, [fl.SimDevice(k, fl.root_key(b"amp", k)) for k in kids])
    assert set(ratios) == {"reading", "hello", "tamper", "chunk_req", "dack"}
    assert all(r <= 1.0 for r in ratios.values()), ratios
    # The ack still goes (it is smaller than what came): a device behind a new NAT mapping is healed.
    assert ratios["reading"] > 0 and ratios["hello"] > 0 and ratios["tamper"] > 0
    assert ratios["chunk_req"] == 0 and ratios["dack"] == 0


def test_a_duplicate_is_answered_at_most_once_per_key_per_second(tmp_path):
    hub = make_hub(tmp_path)
    now = [1000.0]
    hub.monotonic = lambda: now[0]
    dev = device_channel()
    d = dev.seal(b"reading")
    assert len(hub.handle(d, ("10.0.0.1", 1))) == 1  # new: acked
    assert len(hub.handle(d, ("10.0.0.1", 1))) == 1  # the device retransmits: acked again
    assert hub.handle(d, ("10.0.0.1", 1)) == []  # within the second: not again
    assert hub.handle(d, ("10.9.9.9", 7)) == []
    down_before = hub.store.device(dev.key_id)["down_seq"]
    now[0] += 1.0
    assert len(hub.handle(d, ("10.9.9.9", 7))) == 1  # a new address (NAT rebinding): an ack, 13 < 45 bytes
    assert hub.store.device(dev.key_id)["down_seq"] == down_before + 1
    assert hub.counters["duplicate_unanswered"] == 2


def test_a_command_datagram_is_not_sent_to_a_foreign_address_beyond_its_credit(tmp_path):
    hub = make_hub(tmp_path)
    dev = device_channel()
    hub.handle(dev.seal(b"r"), ("10.0.0.1", 1))
    hub.store.queue_command(dev.key_id, hp.update_offer_record(2, 0, 0, 4096, bytes(32), 256))
    d = dev.seal(b"r2")
    assert len(hub.handle(d, ("10.0.0.1", 1))) == 2  # ack + the 56-byte command datagram
    hub.monotonic = lambda: 10**6  # a second later, and the device's address no longer fresh
    replies = hub.handle(d, ("10.9.9.9", 7))
    assert sum(map(len, replies)) <= len(d)  # the ack, not the offer
