"""`/metrics` in Prometheus text format (prometheus_client), on an optional HTTP port.

    cellguard hub serve --db ... --metrics-port 9464      # worker i of --workers N: 9464 + i

The hub's own counters (received, accepted, rejected by reason, duplicates, nonce reuse) are read
when Prometheus scrapes, not pushed on every datagram: the hot path stays a dict increment. Batch
sizes and commit latency are histograms the hub feeds once per batch. The fleet figures (devices seen
in the last hour, unlocked units seen) come from the store, shared by all workers, and are cached for
FLEET_CACHE_S so a scrape never scans a big table more than once a minute.

Each instance has its own registry (handed in, or a new one): several hubs in one process (tests)
never collide, and nothing is registered at import.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

FLEET_CACHE_S = 60.0
SEEN_WINDOW_S = 3600.0
_PLAIN = {
    "received": "datagrams received",
    "accepted": "datagrams accepted (new, authentic, inside the replay window)",
    "duplicate": "authentic datagrams seen before: acknowledged again, not delivered again",
    "nonce_reuse": "two different authentic datagrams under one key id and sequence (a broken device)",
    "acks_sent": "acknowledgement datagrams sent",
    "commit_failed": "batches whose commit failed (none of their datagrams answered)",
    "internal_error": "datagrams that hit a bug in the hub",
    "dropped_overload": "datagrams dropped because too many waited for a batch",
}


class _HubCollector:
    def __init__(self, counters: Callable[[], dict], fleet: Callable[[float], tuple[int, int]], clock):
        self._counters = counters
        self._fleet = fleet
        self._clock = clock
        self._fleet_cache: tuple[float, tuple[int, int]] | None = None

    def _fleet_now(self) -> tuple[int, int]:
        now = self._clock()
        if self._fleet_cache is None or now - self._fleet_cache[0] >= FLEET_CACHE_S:
            self._fleet_cache = (now, self._fleet(now - SEEN_WINDOW_S))
        return self._fleet_cache[1]

    def _snapshot(self) -> dict:
        # The hub's thread adds keys (a new rejection reason) while we copy: copy again then.
        for _ in range(10):
            try:
                return dict(self._counters())
            except RuntimeError:
                continue
        return {}

    def collect(self):
        c = self._snapshot()
        for name, doc in _PLAIN.items():
            yield CounterMetricFamily("cellguard_hub_" + name, doc, value=c.get(name, 0))
        rejected = CounterMetricFamily("cellguard_hub_rejected", "datagrams rejected, by reason", labels=["reason"])
        for key, value in sorted(c.items()):
            if key.startswith("rejected."):
                rejected.add_metric([key.split(".", 1)[1]], value)
        yield rejected
        seen, unlocked = self._fleet_now()
        yield GaugeMetricFamily("cellguard_hub_devices_seen_last_hour", "key ids with a datagram accepted in the last hour", value=seen)
        yield GaugeMetricFamily(
            "cellguard_hub_unlocked_units_seen", "live devices that ever sent with the UNLOCKED flag (must not ship)", value=unlocked
        )


class HubMetrics:
    """The hub's metrics; `observe_batch` once per committed batch; `serve(port)` for Prometheus."""

    def __init__(self, hub, store, registry: CollectorRegistry | None = None, clock=time.time):
        self.registry = registry or CollectorRegistry()
        self.batch_size = Histogram(
            "cellguard_hub_batch_size", "datagrams per committed batch (group commit)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "cellguard_hub_commit_seconds", "time to commit one batch (one transaction)",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0), registry=self.registry,
        )
        self.mqtt_published = Counter(
            "cellguard_hub_mqtt_published", "messages the MQTT broker acknowledged (QoS 1)", registry=self.registry
        )
        self.registry.register(_HubCollector(lambda: hub.counters, store.fleet_activity, clock))
        self._server = None

    def observe_batch(self, datagrams: int, commit_s: float) -> None:
        self.batch_size.observe(datagrams)
        self.commit_seconds.observe(commit_s)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Start the HTTP endpoint (a daemon thread); returns the port (0: the kernel chose one)."""
        self._server, _thread = start_http_server(port, host, registry=self.registry)
        return self._server.server_port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
