"""/metrics in Prometheus text format: the hub's counters, rejections by reason, batch sizes, commit
latency and the fleet figures, scraped over real HTTP from a hub on a real UDP socket."""

import socket

from cellguard import wire
from cghub import server as hubmod
from cghub.metrics import HubMetrics
from hubkit import device_channel, make_hub
from hubproc import scrape


def test_metrics_endpoint_reports_what_the_hub_did(tmp_path):
    hub = make_hub(tmp_path)
    metrics = hub.metrics = HubMetrics(hub, hub.store)
    port = metrics.serve(0)
    dev = device_channel(unlocked=True)
    good = dev.seal(bytes([wire.CTRL_HELLO, 1]) + b"1.0.0", control=True)
    forged = bytearray(dev.seal(b"x"))
    forged[-1] ^= 1
    stranger = device_channel(key_id=42).seal(b"x")
    try:
        with hubmod.HubServer(hub) as server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(30)
            # Rejections are not answered: they go first, so the answer to the last datagram means the
            # hub has handled all five (one socket, batches in arrival order).
            for data in (bytes(forged), stranger, b"\x41", good, good):
                s.sendto(data, ("127.0.0.1", server.port))
            s.recvfrom(2048)
            s.recvfrom(2048)
        m = scrape(port)
    finally:
        metrics.stop()
    assert m["cellguard_hub_received_total"] == 5
    assert m["cellguard_hub_accepted_total"] == 1
    assert m["cellguard_hub_duplicate_total"] == 1
    assert m["cellguard_hub_nonce_reuse_total"] == 0
    assert m["cellguard_hub_rejected_total{reason=bad tag}"] == 1
    assert m["cellguard_hub_rejected_total{reason=unknown key}"] == 1
    assert m["cellguard_hub_rejected_total{reason=truncated}"] == 1
    assert m["cellguard_hub_batch_size_count"] >= 1 and m["cellguard_hub_commit_seconds_count"] >= 1
    assert m["cellguard_hub_devices_seen_last_hour"] == 1
    assert m["cellguard_hub_unlocked_units_seen"] == 1


def test_serve_exposes_metrics_on_the_port_asked(tmp_path):
    from hubproc import HubProcess
    from servers import free_port

    port = free_port()
    make_hub(tmp_path)  # registers the device in tmp_path/hub.sqlite
    with HubProcess(["--db", str(tmp_path / "hub.sqlite"), "--metrics-port", str(port)]) as hub:
        hub.wait_for("metrics on http")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(30)
            s.sendto(device_channel().seal(b"x"), ("127.0.0.1", hub.port))
            s.recvfrom(2048)
        m = scrape(port)
        assert hub.stop() == 0
    assert m["cellguard_hub_accepted_total"] == 1
