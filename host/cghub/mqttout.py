"""Accepted messages out to MQTT (paho-mqtt), from the store's outbox: none lost while the broker is away.

    cellguard hub serve --db ... --mqtt mqtt://broker.example:1883

The hub writes every accepted message into the store's `messages` table in the same transaction as
the replay window, marked unpublished. This publisher reads the unpublished ones in order and
publishes each with QoS 1 to `cellguard/<device id>/<type>`; only when the broker's PUBACK arrives is
the message marked published. So a message waits in the store for as long as the broker is down and
goes out once it is back; a message the broker acknowledged is never published again. Between a
PUBACK and its mark (a hub killed at that instant) a message can go out twice: the payload carries
`key_id` and `seq`, and `idempotency_key` = "<key id>:<seq>", for consumers to drop such a copy.

One publisher per database: with `--workers N` it runs in worker 0 only, so two workers never
publish the same row. The network I/O runs in paho's thread; ours only reads the outbox and marks.
"""

from __future__ import annotations

import json
import logging
import threading
from urllib.parse import urlparse

from paho.mqtt import client as mqtt

from cghub.store import Message, Store

log = logging.getLogger("cellguard.hub.mqtt")

TOPIC_PREFIX = "cellguard"
POLL_S = 0.5  # other workers' messages are found at least this often (our own wake the publisher at once)
INFLIGHT = 200  # unacknowledged QoS 1 messages at a time: bounds memory while the broker is slow


def topic(m: Message) -> str:
    # The device id is one topic level: MQTT's separators and wildcards in it would change the topic.
    dev = "".join("_" if c in "/+#" else c for c in m.device_id) or "_"
    return f"{TOPIC_PREFIX}/{dev}/{m.kind}"


def payload(m: Message) -> bytes:
    body = m.as_json()
    body["idempotency_key"] = f"{m.key_id}:{m.seq}"
    return json.dumps(body, sort_keys=True).encode()


def parse_url(url: str) -> tuple[str, int]:
    u = urlparse(url if "://" in url else "mqtt://" + url)
    return u.hostname or "127.0.0.1", u.port or 1883


class MqttOut:
    """Drains `store.unpublished()` to a broker with QoS 1; `wake()` after a commit to publish at once."""

    def __init__(self, store: Store, host: str, port: int, client_id: str = "cellguard-hub",
                 reconnect_max_s: float = 30, metrics=None):
        self.store = store
        self.metrics = metrics
        self.counters = {"published": 0, "acked": 0}
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        self._client.max_inflight_messages_set(INFLIGHT)
        self._client.reconnect_delay_set(1, max(1, int(reconnect_max_s)))
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._host, self._port = host, port
        self._connected = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        # paho may call on_publish while it holds its own lock, so that callback only appends to a list
        # under a lock of its own; the maps below belong to our thread alone.
        self._ack_lock = threading.Lock()
        self._acked_mids: list[int] = []
        self._inflight: dict[int, int] = {}  # paho message id -> outbox id, until its PUBACK
        self._thread = threading.Thread(target=self._run, daemon=True, name="mqtt-out")

    # ---- paho's callbacks (its network thread) -------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason, properties=None):
        if not reason.is_failure:
            log.info("MQTT connected to %s:%d", self._host, self._port)
            self._connected.set()
            self._wake.set()

    def _on_disconnect(self, client, userdata, flags, reason, properties=None):
        if self._connected.is_set():
            log.warning("MQTT broker %s:%d gone (%s): messages wait in the store", self._host, self._port, reason)
        self._connected.clear()

    def _on_publish(self, client, userdata, mid, reason, properties=None):
        with self._ack_lock:
            self._acked_mids.append(mid)
        self._wake.set()

    # ---- our thread ---------------------------------------------------------------------------------
    def start(self) -> MqttOut:
        # connect_async + loop_start: paho connects, and reconnects after any loss, in its own thread.
        self._client.connect_async(self._host, self._port, keepalive=30)
        self._client.loop_start()
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self, drain_timeout: float = 10) -> None:
        """Stop; first wait (bounded) for the PUBACKs in flight, so their marks are written."""
        self._stop.set()
        self._wake.set()
        self._thread.join(drain_timeout + 5)
        self._client.loop_stop()
        self._client.disconnect()

    def pending(self) -> int:
        return len(self._inflight)

    def _run(self) -> None:
        while True:
            self._wake.wait(POLL_S)
            self._wake.clear()
            try:
                self._mark()
                if self._stop.is_set():
                    self._drain()
                    return
                if self._connected.is_set():
                    self._publish_waiting()
            except Exception:  # the store or the broker misbehaving must not end publishing for good
                log.exception("MQTT out: will retry")
                self._stop.wait(POLL_S)

    def _drain(self) -> None:
        deadline = threading.Event()
        for _ in range(100):
            if not self.pending() or not self._connected.is_set():
                break
            deadline.wait(0.05)
            self._mark()
        self._mark()

    def _mark(self) -> None:
        with self._ack_lock:
            mids, self._acked_mids = self._acked_mids, []
        done = [self._inflight.pop(m) for m in mids if m in self._inflight]
        if done:
            self.store.mark_published(done)
            self.counters["acked"] += len(done)
            if self.metrics is not None:
                self.metrics.mqtt_published.inc(len(done))

    def _publish_waiting(self) -> None:
        room = INFLIGHT - self.pending()
        if room <= 0:
            return
        skip = set(self._inflight.values())
        for oid, m in self.store.unpublished(limit=room + len(skip)):
            if oid in skip:
                continue  # in paho's hands already (it resends after a reconnect by itself)
            info = self._client.publish(topic(m), payload(m), qos=1)
            self._inflight[info.mid] = oid
            self.counters["published"] += 1
            room -= 1
            if room <= 0 or not self._connected.is_set():
                return
