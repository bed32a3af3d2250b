"""Over-the-air updates that finish in the field: a MicroPython device (unix port, littlefs on the
flash simulator, the real outbox, update glue and boot part) fetches a 64 KiB image from the real hub
over real UDP (host_tests/otakit.py). Long intervals (a coverage gap, the next day) are driven by
clocks the test controls; everything else waits for events.

1. the update has its own budget (set by the hub) and readings are never delayed by it;
2. a coverage gap never parks an update, and the hub offers again until the device reports;
3. chunks are of the image asked for: a re-publication mid-download is never mixed in;
4. offers only move forward (a download, a verified image waiting for its reboot);
5. a chunk longer than asked for is rejected.
"""

import pytest
from boot_kit import session_kit
from cghub import proto as hp
from cghub import updates as hub_updates
from hubkit import KEY_ID
from otakit import OtaRig

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return session_kit(tmp_path_factory)


def _size(kit, name):
    return kit.images[name].stat().st_size


def test_update_has_its_own_budget_and_never_delays_readings(kit, tmp_path):
    with OtaRig(tmp_path, kit) as rig:
        with rig.hub.lock:  # the hub sets the update budget: 40,000 bytes a day
            rig.hub.store.queue_command(KEY_ID, hp.config_record(5, 40_000))
        rig.publish("big64k_next")
        rig.do("read 25")
        r = rig.until("budget")  # day 1: the update's bytes are spent, it waits for tomorrow
        assert r["update_limit"] == 40_000 and r["update_used"] <= 40_000
        assert 20_000 < r["have"] < _size(kit, "big64k_next")
        rig.do("read 25")
        r = rig.until("delivered")  # meanwhile every reading goes out at once
        assert r["outbox"]["budget_stops"] == 0 and r["readings"] == 50
        assert r["budget_used"] < 4096  # CHUNK REQs are not the readings' bytes
        assert r["state"] == "waiting for the update budget" and r["page"].endswith("waiting for the update budget")
        day1, readings1 = r["update_used"], r["budget_used"]
        rig.do("day")
        rig.do("read 1")  # day 2's first reading opens the readings' new day
        r = rig.until("done")  # day 2: the update goes on by itself and finishes
        r = rig.until("delivered")
        assert r["update_used"] <= 40_000 and r["outbox"]["budget_stops"] == 0
        assert r["mode"] == 1 and r["page"] == "update      verified, reboot pending"
        # The readings' budget never pays for a chunk request (they are the update budget's) ...
        assert readings1 + r["budget_used"] <= r["link"]["bytes"][0] - r["ota"]["request_bytes"]
        # ... and the chunks that came down are counted too, with their headers.
        assert day1 + r["update_used"] >= r["chunk_bytes"] + 50 * r["ota"]["chunks"] + r["ota"]["request_bytes"]
        # Both directions are counted: what reached the air is within what the budget charged.
        air = sum(r["link"]["bytes"]) + 28 * sum(r["link"]["datagrams"])
        assert air <= 40_000 * 2 + r["budget_used"] + 28 * 60


def _coverage_gap(kit, tmp_path, ceiling_steps):
    with OtaRig(tmp_path, kit) as rig:
        size = _size(kit, "big64k_next")
        rig.publish("big64k_next")
        r = rig.until("have:20000")
        assert r["page"].startswith("update      downloading ")
        rig.do("link down")
        asked = r["ota"]["requests"]
        for _ in range(60):  # 10 min of retries at 10 s steps: far past the old 30 x 5 s
            r = rig.do("clock 10000")["report"]
        assert r["state"] == "waiting for coverage" and r["page"] == "update      waiting for coverage"
        assert r["ota"]["requests"] > asked
        asked = r["ota"]["requests"]
        for _ in range(ceiling_steps):  # then the backoff at its 10 min ceiling (+-25 %): it never gives up
            r = rig.do("clock 600000")["report"]
        assert r["active"] and r["ota"]["requests"] >= asked + ceiling_steps // 2
        rig.do("link up")
        rig.do("clock 800000")  # the next retry, by itself: no reboot, no new offer
        r = rig.until("done")
        assert r["rebooted"] == 0 and r["have"] == size and r["ota"]["rejected_chunks"] == 0


def test_a_coverage_gap_never_parks_the_update(kit, tmp_path):
    _coverage_gap(kit, tmp_path, ceiling_steps=18)  # 3 hours at the ceiling (the whole day: soak)


@pytest.mark.soak
def test_a_day_long_coverage_gap_never_parks_the_update(kit, tmp_path):
    _coverage_gap(kit, tmp_path, ceiling_steps=150)


def test_the_hub_offers_again_until_the_device_reports(kit, tmp_path):
    with OtaRig(tmp_path, kit) as rig:
        rig.publish("big64k_next")
        rig.until("have:20000")
        first = rig.target()
        assert first["state"] == "downloading" and first["offered_at"] is not None
        rig.do("link down")  # the device falls silent ...
        rig.clock.t += 2 * hub_updates.REOFFER_S
        rig.do("link up")
        rig.do("read 1")  # ... and its next reading's ack carries the offer again
        rig.until("delivered")
        assert rig.target()["offered_at"] == rig.clock.t
        r = rig.until("done")  # the re-offer of the same image carries on where it stopped
        assert r["ota"]["rejected_chunks"] == 0
        rig.do("reboot")
        r = rig.until("idle")
        assert r["version"] == "1.4.0+0" and r["page"] == "update      installed 1.4.0"
        assert rig.target()["state"] == "installed"  # the device said so: no more offers
        offered = rig.target()["offered_at"]
        rig.clock.t += 2 * hub_updates.REOFFER_S
        rig.do("read 1")
        rig.until("delivered")
        assert rig.target()["offered_at"] == offered


def test_a_refused_or_superseded_image_is_reported_and_not_offered_again(kit, tmp_path):
    with OtaRig(tmp_path, kit) as rig:
        rig.publish("rogue")  # signed by a key the boot part does not trust
        r = rig.until("state:refused")
        assert r["page"].startswith("update      refused: ") and r["mode"] == 0  # nothing pending
        rig.until("delivered")  # the UPDATE STATUS, through the outbox
        t = rig.target()
        assert t["state"] == "refused" and t["reason"]
        rig.clock.t += 2 * hub_updates.REOFFER_S
        rig.do("reboot")  # a HELLO, and hours later: no offer of a refused image
        r = rig.until("delivered")
        assert rig.target()["offered_at"] == t["offered_at"] and r["version"] == "1.0.0+0"
        # An image older than the running one (0.9.0): the device says superseded, and the hub stops.
        rig.publish("old")
        rig.do("read 1")
        rig.until("delivered")  # the reading, whose ack carries the offer, then the UPDATE STATUS
        t = rig.target()
        assert (t["state"], t["reason"]) == ("superseded", "running 1.0.0")
        rig.clock.t += 2 * hub_updates.REOFFER_S
        rig.do("read 1")
        rig.until("delivered")
        assert rig.target()["offered_at"] == t["offered_at"]


def test_a_republished_image_is_never_mixed_into_the_download(kit, tmp_path):
    with OtaRig(tmp_path, kit) as rig:
        with rig.hub.lock:  # two images' worth in one day: not what this test is about
            rig.hub.store.queue_command(KEY_ID, hp.config_record(5, 1 << 20))
        rig.publish("big64k")
        rig.until("have:20000")
        new = rig.publish("big64k_next")  # re-published mid-download: a new image for this device
        r = rig.until("done")  # told at its next request (NO IMAGE + the new offer), not at a reading
        assert r["mode"] == 1 and r["state"] == "verified, reboot pending"
        # What it fetched: part of the first image, then the new one from its start, once.
        assert r["chunk_bytes"] <= 20_000 + 4 * 976 + len(new)
        rig.do("reboot")
        r = rig.until("idle")
        assert r["version"] == "1.4.0+0"
        assert rig.target()["state"] == "installed"


def test_offers_only_move_forward(kit, tmp_path):
    older = kit.images["big64k"].read_bytes()
    import hashlib

    older_offer = hp.update_offer_record(1, 3, 0, len(older), hashlib.sha256(older).digest(), 1024)
    with OtaRig(tmp_path, kit) as rig:
        size = _size(kit, "big64k_next")
        rig.publish("big64k_next")
        rig.until("have:20000")
        with rig.hub.lock:  # an older offer (a stale command) arrives mid-download ...
            rig.hub.store.queue_command(KEY_ID, older_offer)
        rig.do("read 1")
        r = rig.until("done")  # ... and the download goes on: nothing fetched twice
        assert r["chunk_bytes"] <= size + 4 * 976 and r["mode"] == 1
        # Verified, its reboot not yet done: an older offer (still newer than the running 1.0.0)
        # must not cancel the pending image.
        with rig.hub.lock:
            rig.hub.store.queue_command(KEY_ID, older_offer)
        rig.do("read 1")
        r = rig.until("delivered")
        assert r["mode"] == 1 and r["state"] == "verified, reboot pending"
        rig.do("reboot")
        r = rig.until("idle")
        assert r["version"] == "1.4.0+0"


class LongChunks(hub_updates.Updates):
    """A hub that answers each request with chunks one byte longer than asked for."""

    long = True

    def serve(self, key_id, plain, new, batch=None):
        out = super().serve(key_id, plain, new, batch)
        if not self.long:
            return out
        fixed = []
        for rec in out:
            kind = hp.parse_records(rec)[0]
            if kind[0] == "image_chunk":
                rec = hp.image_chunk_record(kind[1], kind[2], bytes(kind[3]) + b"\x00")
            fixed.append(rec)
        return fixed


def test_a_chunk_longer_than_asked_for_is_rejected(kit, tmp_path):
    with OtaRig(tmp_path, kit) as rig:
        with rig.hub.lock:
            rig.updates = rig.hub.update_provider = LongChunks(rig.hub.store, rig.clock)
        size = _size(kit, "big64k_next")
        rig.publish("big64k_next")
        r = rig.until("rejected:4")  # the first window: every chunk one byte too long
        rig.do("clock 700000")  # the session asks again, and again it is refused
        r = rig.until("rejected:8")
        assert r["have"] == 0 and r["ota"]["chunks"] == 0  # nothing of them written
        rig.updates.long = False
        rig.do("clock 700000")
        r = rig.until("done")
        assert r["have"] == size and r["mode"] == 1


def test_a_power_cut_resumes_by_itself_refetching_one_chunk_at_most(kit, tmp_path):
    with OtaRig(tmp_path, kit) as rig:
        size = _size(kit, "big64k_next")
        rig.publish("big64k_next")
        r = rig.until("have:20000")
        lost = r["chunk_bytes"] - r["have"]
        rig.do("cut 2")  # the power fails at the next flash operation but one
        out = rig.do("until have:40000")
        assert out["ok"] == "cut" and out["report"]["rebooted"] == 1
        r = rig.until("done")  # after the reboot it goes on by itself, from what reached the flash
        assert r["have"] == size and r["chunk_bytes"] - size - lost <= 976
