"""Over the air through the hub: `cellguard hub publish` offers a signed image; the device's session
asks for chunks over the secured channel, writes the inactive slot, verifies, marks it for test, and
the next boot trial-boots it. A power cut mid-download resumes from what reached the flash."""

import hashlib

import pytest
from boot_kit import session_kit
from cellguard import downlink, message
from cellguard.ota import OtaSession, chunk_request_payload
from cgboot import image, loader, slots, update
from cgdev import image as image_tool
from cghub import proto as hp
from cghub import server as hubmod
from cghub import updates as hub_updates
from hubkit import KEY_ID, device_channel, make_hub


@pytest.fixture(scope="session")
def kit(tmp_path_factory):
    return session_kit(tmp_path_factory)


def trusted(kit):
    return [image.TrustedKey(*image_tool.public_key(kit.keys[k])) for k in ("ed_a", "ed_b", "ec")]


class Device:
    """A CPython device: message channel + slots in a folder + the OTA session."""

    def __init__(self, kit, fs, running=(1, 0, 0)):
        self.channel = device_channel()
        self.slots = slots.Slots(str(fs), trusted(kit))
        self.outbox: list[bytes] = []
        self.events: list[str] = []
        self.rebooted = False
        self.session = OtaSession(
            update.UpdateWriter(self.slots),
            running,
            self._request,
            self._reboot,
            lambda event, detail="": self.events.append(event),
            window=1,  # a small image in several requests: the power can fail part-way
        )

    def _request(self, off, n, count, image_id):
        self.outbox.append(self.channel.seal(chunk_request_payload(off, n, count, image_id), control=True))
        return len(self.outbox[-1])

    def _reboot(self):
        self.rebooted = True

    def exchange(self, hub, limit=200, stop_after=None):
        """Send queued uplinks, feed the hub's answers to the session; stop_after: datagrams."""
        sent = 0
        while self.outbox and limit:
            limit -= 1
            for reply in hub.handle(self.outbox.pop(0)):
                try:
                    _, _, payload = self.channel.open(reply)
                except message.Replayed:
                    continue  # a command datagram resent: already executed
                for rec in downlink.parse(payload):
                    self.session.handle(rec)
            sent += 1
            if stop_after is not None and sent >= stop_after:
                return


def test_publish_to_one_device_installs_and_trial_boots(kit, tmp_path):
    hub = make_hub(tmp_path)
    hub.update_provider = hub_updates.provider(hub.store)
    db = str(tmp_path / "hub.sqlite")
    assert (
        hubmod.main(["publish", "--db", db, "--image", str(kit.images["v2"]), "--key-id", str(KEY_ID)]) == 0
    )
    fs = tmp_path / "fs"
    image_tool.install(kit.images["v1"], fs)
    dev = Device(kit, fs)
    assert loader.decide(dev.slots, log=lambda m: None).info.version_str() == "1.0.0+0"  # factory boot
    dev.outbox.append(dev.channel.seal(b"t=21.5"))  # any uplink: the hub answers with the offer
    dev.exchange(hub, stop_after=2)  # ... then the power fails part-way
    assert not dev.rebooted and dev.slots.slot_bytes(1) > 0
    channel = dev.channel  # the messaging layer persists its sequence numbers across reboots
    dev = Device(kit, fs)  # after the reboot: a new session over the same flash
    dev.channel = channel
    assert dev.session.resume()  # asks for the first chunk that did not reach the flash
    dev.exchange(hub)
    assert dev.rebooted and dev.events[-1] == "update_ready"
    r = loader.decide(dev.slots, log=lambda m: None)
    assert r.trial and r.info.version_str() == "1.1.0+0"


def test_publish_to_all_and_refusals(kit, tmp_path):
    hub = make_hub(tmp_path)
    hub.store.register_device(2002, "dev-2", bytes(32))
    db = str(tmp_path / "hub.sqlite")
    assert hubmod.main(["publish", "--db", db, "--image", str(kit.images["v2"]), "--all"]) == 0
    updates = hub_updates.provider(hub.store)
    assert updates.target(KEY_ID)["state"] == "offered" and updates.target(2002)["state"] == "offered"
    not_an_image = tmp_path / "x.bin"
    not_an_image.write_bytes(b"hello" * 20)
    assert hubmod.main(["publish", "--db", db, "--image", str(not_an_image), "--all"]) == 1
    data = kit.images["v2"].read_bytes()
    iid = hashlib.sha256(data).digest()[:4]
    (rec,) = updates.serve(KEY_ID, hp.chunk_request(0, 10, 1, iid), True)
    assert hp.parse_records(rec) == [("image_chunk", iid, 0, data[:10])]
    assert updates.serve(KEY_ID, hp.chunk_request(0, 10, 1, iid), False) == []  # a replay: no answer
    (rec,) = updates.serve(9999, hp.chunk_request(0, 10, 1, iid), True)  # nothing published to it
    assert hp.parse_records(rec) == [("no_image", iid, hp.NO_IMAGE_UNKNOWN)]
    recs = updates.serve(KEY_ID, hp.chunk_request(0, 100_000 % 65536, 200, iid), True)
    assert len(recs) == -(-len(data) // hub_updates.MAX_CHUNK)  # capped: 1 KiB chunks, to the end
    assert all(len(hp.parse_records(r)[0][3]) <= hub_updates.MAX_CHUNK for r in recs)
    # Older firmware's 7-byte request (no image id): one unnamed CHUNK of the image published to it,
    # so a unit in the field can still fetch the firmware that speaks the new request.
    legacy = bytes([hp.CTRL_CHUNK_REQ]) + (5).to_bytes(4, "big") + (10).to_bytes(2, "big")
    assert [hp.parse_records(r) for r in updates.serve(KEY_ID, legacy, True)] == [[("chunk", 5, data[5:15])]]


_MP_DEVICE = """
import sys
import lfsmount, hostudp
from cellguard import keys, seqstore, message, outbox
from cellguard.ota import OtaSession, chunk_request_payload
from cgboot import image, loader, slots, update
import boot_trusted
PORT = int(sys.argv[1])
KEYS = image.trusted(boot_trusted.KEYS)
flash = lfsmount.fresh(blocks=128)
keys.provision(bytes.fromhex(ROOT_HEX), 'dev-1', KEY_ID)
with open(V1, 'rb') as f:
    v1 = f.read()
s = slots.Slots('/fl', KEYS)
s.ensure_dirs()
with open(s.slot_path(0), 'wb') as f:
    f.write(v1)
print('BOOT', loader.boot('/fl', KEYS, None, '/app', log=lambda m: None).info.version_str())
sock = hostudp.HostUdp()
counter = seqstore.SequenceCounter('/fl/state/msg_seq')
ch = message.Channel(keys.derive, counter, key_id=keys.key_id(), mode=1, state_dir='/fl/state')
done = []
def request(off, n, count, iid):
    d = ch.seal(chunk_request_payload(off, n, count, iid), control=True)
    sock.sendto(d, '127.0.0.1', PORT)
    return len(d)
session = OtaSession(update.UpdateWriter(s), (1, 0, 0), request, lambda: done.append(1),
                     lambda e, d='': print('EVENT', e, d))
ob = outbox.Outbox(ch, sock, '127.0.0.1', PORT, base_ms=60, ceiling_ms=480, budget=1 << 30,
                   on_command=session.handle)
ob.enqueue(b'hello')
for _ in range(3000):
    ob.poll(20)
    if done:
        break
r = loader.boot('/fl', KEYS, None, '/app', log=print)
import appmain
print('RAN', appmain.VERSION, r.trial)
"""


def test_publish_over_udp_to_a_micropython_device(kit, tmp_path):
    # The whole path on the real interpreter: hub publishes v2; the device (MicroPython, littlefs)
    # receives the offer in a command datagram, fetches every chunk with CHUNK REQ over UDP,
    # verifies, marks for test and reboots into the trial of v2.
    from cghub.server import HubServer
    from harness import run_micropython
    from hubkit import ROOT

    hub = make_hub(tmp_path)
    hub.update_provider = hub_updates.provider(hub.store)
    hub_updates.publish(hub.store, kit.images["v2"].read_bytes(), [KEY_ID], chunk=400)
    script = (
        _MP_DEVICE.replace("ROOT_HEX", repr(ROOT.hex()))
        .replace("KEY_ID", str(KEY_ID))
        .replace("V1", repr(str(kit.images["v1"])))
    )
    with HubServer(hub) as server:
        out = run_micropython(script, heapsize="4M", timeout=120, args=(server.port,), extra_paths=(kit.lib,))
    lines_ = out.strip().splitlines()
    assert "BOOT 1.0.0+0" in lines_
    assert "EVENT update_ready 1.1.0+0" in lines_
    assert lines_[-1] == "RAN 1.1.0 True"


class _InterfaceOnly:
    """The hub's store seen through the Store interface only (what a PostgreSQL backend offers)."""

    def __init__(self, store):
        self._store = store

    def __getattr__(self, name):
        if name.startswith("_") or not hasattr(hubmod.Store, name):
            raise AttributeError(f"{name} is not part of the Store interface")
        return getattr(self._store, name)


def test_update_state_goes_through_the_store_interface_in_the_batchs_transaction(kit, tmp_path):
    # The OTA state (offered, served, the device's status) is written by the hub's one commit per
    # batch, through the Store interface: a failed commit leaves none of it, and no SQL of its own.
    hub = make_hub(tmp_path)
    store = hub.store
    hub.store = _InterfaceOnly(store)
    updates = hub.update_provider = hub_updates.Updates(hub.store, clock=lambda: 1000.0)
    data = kit.images["v2"].read_bytes()
    iid = hashlib.sha256(data).digest()[:4]
    hub_updates.publish(hub.store, data, [KEY_ID])
    ch = device_channel()

    def fail(batch):
        raise OSError("disk full")

    hub.store.commit_batch = fail  # type: ignore[method-assign]
    assert hub.handle(ch.seal(b"t=21.5")) == [] and hub.handle(ch.seal(hp.chunk_request(0, 64, 2, iid), True)) == []
    assert updates.target(KEY_ID) == {
        "version": "1.1.0", "state": "offered", "reason": "", "served_bytes": 0, "offered_at": None, "last_req": None
    }
    del hub.store.commit_batch
    commits = hub.counters["commits"]
    replies = hub.handle_batch([(ch.seal(b"t=21.6"), None), (ch.seal(hp.chunk_request(0, 64, 2, iid), True), None)])
    assert len(replies) == 3 and hub.counters["commits"] == commits + 1  # ack with the offer, 2 chunks: one commit
    assert [r[0] for r in hp.parse_records(ch.open(replies[0][0])[2])][-1] == "update_offer"  # not lost with the commit
    t = updates.target(KEY_ID)
    assert (t["state"], t["offered_at"], t["last_req"]) == ("downloading", 1000.0, 1000.0) and t["served_bytes"] > 128
    status = bytes([hp.CTRL_UPDATE_STATUS, hp.UPDATE_INSTALLED]) + iid
    assert hub.handle(ch.seal(status, True))
    assert updates.target(KEY_ID)["state"] == "installed"
    assert hub_updates.Updates(store).target(KEY_ID)["state"] == "installed"  # committed, as any reader sees it
