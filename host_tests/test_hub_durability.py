"""Group commit is durable: a real hub process killed (SIGKILL) under load, at several moments,
loses no acknowledged message and never seals two downlinks under one sequence number."""

import random

import pytest
from cghub.server import HubStore
from cgsim import fleet as fl
from hubkit import HubProcess

DEVICES = 200
KEY_BASE = 500_000


def _kill_and_restart(tmp_path, kill_at: list[int], readings: int = 5):
    db = tmp_path / "hub.sqlite"
    store = HubStore(db)
    fl.register(store, DEVICES, KEY_BASE)
    store.close()
    hub = HubProcess(db, tmp_path / "hub0.log")
    port = hub.port
    fleet = fl.Fleet(("127.0.0.1", port), DEVICES, KEY_BASE, readings=readings, window_s=1.0, base_s=0.2,
                     ceiling_s=1.0, sockets=50, rng=random.Random(7))
    acked_before_kill: set[bytes] = set()
    try:
        for n, target in enumerate(kill_at):
            fleet.run(60, until=lambda t=target: fleet.stats["acked"] >= t)
            assert fleet.stats["acked"] >= target, fleet.report()
            hub.kill()  # mid-stream: the fleet keeps sending, datagrams are in flight and in batches
            acked_before_kill |= set(fleet.acked_payloads)
            hub = HubProcess(db, tmp_path / f"hub{n + 1}.log", port=port)
        report = fleet.run(120)
    finally:
        fleet.close()
        hub.stop()
    return db, fleet, report, acked_before_kill


@pytest.mark.timeout(240)
def test_sigkill_under_load_loses_no_acknowledged_message(tmp_path):
    readings = 5
    total = DEVICES * readings
    db, fleet, report, acked_before_kill = _kill_and_restart(tmp_path, [total // 5, total // 2], readings)
    assert report["unacked"] == 0, report
    store = HubStore(db)
    got = [m.payload for _, m in store.messages(0, 10 * total) if m.kind == "reading"]
    assert len(got) == len(set(got)) == total  # every reading exactly once ...
    assert acked_before_kill and acked_before_kill <= set(got)  # ... including all acked before a kill
    assert report["down_nonce_reuse"] == 0, report  # no downlink number sealed twice across the kills
    assert report["down_received"] >= total // 2


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_sigkill_at_many_moments(tmp_path):
    readings = 20
    total = DEVICES * readings
    kill_at = sorted(random.Random(11).sample(range(total // 20, total - total // 20), 8))
    db, fleet, report, acked_before_kill = _kill_and_restart(tmp_path, kill_at, readings)
    assert report["unacked"] == 0, report
    store = HubStore(db)
    got = [m.payload for _, m in store.messages(0, 10 * total) if m.kind == "reading"]
    assert len(got) == len(set(got)) == total
    assert acked_before_kill <= set(got)
    assert report["down_nonce_reuse"] == 0, report
