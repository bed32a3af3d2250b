"""A fleet in a burst: cgsim.fleet (its own process, each device with its own key, sequence numbers,
outbox and the firmware's backoff) reports through cgsim.udprelay with 10 % loss both ways to a real
hub process. Every reading reaches the hub exactly once, none is lost, no downlink nonce is reused.
1,000 devices in `make test`; 10,000 within one 60-second window in `make soak`."""

import json
import subprocess
import sys

import pytest
from cghub.server import HubStore
from cgsim import fleet as fl
from hubkit import HubProcess


def _burst(tmp_path, devices: int, window_s: float, base_s: float, ceiling_s: float, key_base: int = 300_000):
    db = tmp_path / "hub.sqlite"
    store = HubStore(db)
    fl.register(store, devices, key_base)
    store.close()
    hub = HubProcess(db, tmp_path / "hub.log")
    try:
        cmd = [sys.executable, "-m", "cgsim.fleet", "--hub", f"127.0.0.1:{hub.port}", "--devices", str(devices),
               "--key-base", str(key_base), "--window", str(window_s), "--base", str(base_s),
               "--ceiling", str(ceiling_s), "--loss", "0.1", "--timeout", "600"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        report = json.loads(proc.stdout)
    finally:
        hub.stop()
    store = HubStore(db)
    got = [m.payload for _, m in store.messages(0, 10 * devices) if m.kind == "reading"]
    store.close()
    want = {fl.reading(key_base + i, 1) for i in range(devices)}
    return report, got, want


def _check(report, got, want):
    assert report["unacked"] == 0, report
    assert report["resent"] > 0 and report["relay_up"] > report["sent"]  # the loss was real
    assert len(got) == len(set(got)), "a reading delivered twice"
    assert set(got) == want, f"{len(want - set(got))} readings lost"
    assert report["down_nonce_reuse"] == 0 and report["down_rejected"] == 0, report


@pytest.mark.timeout(300)
def test_a_thousand_devices_through_a_lossy_relay_deliver_every_reading_once(tmp_path):
    # The firmware's backoff rule with a shorter base and ceiling, so the test takes seconds.
    _check(*_burst(tmp_path, 1000, window_s=2, base_s=0.3, ceiling_s=2))


@pytest.mark.soak
@pytest.mark.timeout(1200)
def test_ten_thousand_devices_in_one_minute_through_a_lossy_relay(tmp_path):
    # The firmware's own backoff: base 2 s doubling to 600 s.
    _check(*_burst(tmp_path, 10_000, window_s=60, base_s=2, ceiling_s=600))
