"""Accepted messages out to MQTT (paho-mqtt), from the store's outbox: none lost while the broker is away.

    cellguard hub serve --db ... --mqtt mqtt://broker.example:1883

The hub writes every accepted message into the store's `messages` table in the same transaction as
the replay window, marked unpublished. This publisher reads the unpublished ones in order and
publishes each with QoS 1 to `cellguard/<device id>/<type>`; only when the broker's PUBACK arrives is
the message marked published. So a message waits in the store for as long as the broker is down and
goes out once it is back; a message the broker acknowledged is never published again. Between a
PUBACK and its mark (a hub killed at that instant) a message can go out twice: the payload carries
`key_id` and `seq`, and `idempotency_key` = "<key id>:<seq>", for consumers to drop such a copy.

One publisher per database, across processes and hosts. With `--workers N` only worker 0 runs one;
and every such publisher (one per host sharing a PostgreSQL database) must hold the store's
publisher lease (`Store.publisher_lease()`: on PostgreSQL a session-level advisory lock) to publish.
It checks the lease before each read of the outbox and stops at once when it lost it. One that does
not hold it stands by: no broker connection (so no clash over the client id), another try every
LEASE_RETRY_S. When the holder dies or its database session drops, PostgreSQL frees the lock and a
standing-by publisher takes over within LEASE_RETRY_S, from `unpublished()`: what the old holder had
published but not yet marked goes out again (the same at-least-once window as a restart).

The network I/O runs in paho's thread; ours only checks the lease, reads the outbox and marks.
"""

from __future__ import annotations

import json
import logging
import threading
from urllib.parse import urlparse

from paho.mqtt import client as mqtt

from cghub.store import Message, PublisherLease, Store

log = logging.getLogger("cellguard.hub.mqtt")

TOPIC_PREFIX = "cellguard"
POLL_S = 0.5  # other workers' messages are found at least this often (our own wake the publisher at once)
INFLIGHT = 200  # unacknowledged QoS 1 messages at a time: bounds memory while the broker is slow
LEASE_RETRY_S = 2.0  # a standing-by publisher tries the lease this often: the failover time, after the session ends


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
    """Drains `store.unpublished()` to a broker with QoS 1 while it holds the store's publisher lease;
    `wake()` after a commit to publish at once."""

    def __init__(self, store: Store, host: str, port: int, client_id: str = "cellguard-hub",
                 reconnect_max_s: float = 30, metrics=None, lease: PublisherLease | None = None):
        self.store = store
        self.metrics = metrics
        self.counters = {"published": 0, "acked": 0}
        self.lease = lease if lease is not None else store.publisher_lease()
        self._client_id = client_id
        self._reconnect_max_s = reconnect_max_s
        self._client: mqtt.Client | None = None  # only while we hold the lease
        self._role = ""  # "publishing" or "standing by", for logging each change once
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
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self, drain_timeout: float = 10) -> None:
        """Stop; first wait (bounded) for the PUBACKs in flight, so their marks are written."""
        self._stop.set()
        self._wake.set()
        self._thread.join(drain_timeout + 5)

    def pending(self) -> int:
        return len(self._inflight)

    def publishing(self) -> bool:
        """Whether this process holds the lease and so is the database's publisher."""
        return self._client is not None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._holds_lease():
                    self._mark()
                    if self._connected.is_set():
                        self._publish_waiting()
                    self._wake.wait(POLL_S)
                    self._wake.clear()
                else:
                    self._stop.wait(LEASE_RETRY_S)  # not on wake(): our commits do not make the lease free
            except Exception:  # the store or the broker misbehaving must not end publishing for good
                log.exception("MQTT out: will retry")
                self._stop.wait(POLL_S)
        self._finish()

    def _holds_lease(self) -> bool:
        """Ask the lease (before each read of the outbox); connect on taking it, disconnect on losing it."""
        held = self.lease.hold()
        if held and self._client is None:
            self._become_publisher()
        elif not held and self._role != "standing by":
            self._stand_by()
        return held

    def _become_publisher(self) -> None:
        log.info("MQTT publisher: this process holds the lease, publishing to %s:%d", self._host, self._port)
        self._role = "publishing"
        self._client = self._new_client()
        # connect_async + loop_start: paho connects, and reconnects after any loss, in its own thread.
        self._client.connect_async(self._host, self._port, keepalive=30)
        self._client.loop_start()

    def _new_client(self) -> mqtt.Client:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self._client_id, clean_session=True)
        client.max_inflight_messages_set(INFLIGHT)
        client.reconnect_delay_set(1, max(1, int(self._reconnect_max_s)))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    def _stand_by(self) -> None:
        if self._client is not None:
            # Another process may take the lease now: what we published and did not mark is its to
            # publish again (at least once), so nothing of ours may go out any more.
            log.warning("MQTT publisher: lost the lease (its database session ended): stopped publishing")
            self._close_client()
        log.info("MQTT publisher: standing by, another process holds the lease")
        self._role = "standing by"

    def _close_client(self) -> None:
        client, self._client = self._client, None
        self._connected.clear()  # first: our own disconnect is no broker gone (on_disconnect's warning)
        client.disconnect()
        client.loop_stop()
        self._inflight.clear()
        with self._ack_lock:
            self._acked_mids.clear()

    def _finish(self) -> None:
        try:
            if self._client is not None:
                try:
                    self._drain()
                finally:
                    self._close_client()
        finally:
            self.lease.release()  # at once, not when the process exits: a standing-by host takes over

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
