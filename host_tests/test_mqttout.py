"""Accepted messages out to MQTT (cghub.mqttout) through a real broker process (amqtt): QoS 1, topic
`cellguard/<device id>/<type>`, key id and sequence in the payload; while the broker is away the
messages wait in the store and go out once it is back: none lost, none published twice."""

import threading

from cghub import keyseal
from cghub.metrics import HubMetrics
from cghub.mqttout import MqttOut
from cghub.pgstore import PostgresStore
from cghub.server import Hub
from hubkit import DEVICE, KEY_ID, ROOT, device_channel, make_hub
from servers import TcpGate

WAIT_S = 60  # an upper bound on a loaded machine; every wait returns on its event


def wait_outbox_empty(store, publisher):
    cond = threading.Event()
    for _ in range(int(WAIT_S / 0.05)):  # the publisher marks on PUBACK: look until the outbox is empty
        if not store.unpublished() and publisher.pending() == 0:
            return
        cond.wait(0.05)
    raise AssertionError(f"outbox not empty: {len(store.unpublished())} waiting")


def run_outage(hub: Hub, broker, subscriber):
    gate = TcpGate(broker.host, broker.port)  # the hub reaches the broker through a link we can cut
    metrics = HubMetrics(hub, hub.store)
    publisher = MqttOut(hub.store, "127.0.0.1", gate.port, client_id="hub-under-test", reconnect_max_s=1,
                        metrics=metrics).start()
    hub.after_commit = publisher.wake
    dev = device_channel()
    try:
        for i in range(5):
            hub.handle(dev.seal(b"before %d" % i))
        subscriber.wait_distinct(5)
        wait_outbox_empty(hub.store, publisher)
        # The broker goes down (restarted, empty: no session survives) and the hub cannot reach it.
        gate.close()
        # A broker without persistence loses what it acknowledged and had not yet delivered: stop it
        # once our application holds everything the hub handed it (that is the broker's loss, not ours).
        subscriber.wait_keys(gate.acknowledged())
        broker.stop()
        for i in range(10):
            hub.handle(dev.seal(b"during %d" % i))
        assert len(hub.store.unpublished()) == 10  # they wait in the store
        broker.start()
        assert subscriber.subscribed.wait(WAIT_S)  # the application is back first ...
        gate.open()  # ... then the hub's link: what it publishes now has someone to reach
        subscriber.wait_distinct(15)
        wait_outbox_empty(hub.store, publisher)
        for i in range(3):
            hub.handle(dev.seal(b"after %d" % i))
        subscriber.wait_distinct(18)
        wait_outbox_empty(hub.store, publisher)
    finally:
        publisher.stop()
        gate.shutdown()
    assert metrics.registry.get_sample_value("cellguard_hub_mqtt_published_total") == 18  # PUBACKed, once each
    keys = [p["idempotency_key"] for _, p in subscriber.got]
    assert len(keys) == 18 and len(set(keys)) == 18  # none lost, none twice
    assert sorted(p["seq"] for _, p in subscriber.got) == list(range(18))
    topic, first = subscriber.got[0]
    assert topic == f"cellguard/{DEVICE}/reading"
    assert first["key_id"] == KEY_ID and first["idempotency_key"] == f"{KEY_ID}:{first['seq']}"
    assert bytes.fromhex(first["payload_hex"]).startswith(b"before")


def test_mqtt_out_survives_a_broker_restart_on_sqlite(tmp_path, mqtt_broker, subscriber):
    run_outage(make_hub(tmp_path), mqtt_broker, subscriber)


def test_mqtt_out_survives_a_broker_restart_on_postgres(pg_url, mqtt_broker, subscriber):
    store = PostgresStore(pg_url, keyring=keyseal.keyring_from())
    store.register_device(KEY_ID, DEVICE, ROOT)
    run_outage(Hub(store), mqtt_broker, subscriber)
