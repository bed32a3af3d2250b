"""One MQTT publisher per database, across hosts (cghub.mqttout, the store's publisher lease): the
lease itself on SQLite and PostgreSQL; a publisher whose lease session ends stops and another takes
over; two hub process trees on one PostgreSQL, both with `--mqtt`, publish every accepted message
once, and when the one holding the lease is killed the other publishes what follows."""

import random
from concurrent.futures import ThreadPoolExecutor

import psycopg
from cghub import keyseal
from cghub.mqttout import MqttOut
from cghub.pgstore import PUBLISHER_LOCK, PostgresStore
from cghub.server import Hub
from cghub.store import SqliteStore
from cgsim import fleet as fl
from hubkit import DEVICE, KEY_ID, ROOT, device_channel
from hubproc import HubProcess
from servers import MqttSubscriber, wait_for

WAIT_S = 60  # an upper bound on a loaded machine; every wait returns on its event
PUBLISHING = "MQTT publisher: this process holds the lease"
STANDING_BY = "MQTT publisher: standing by, another process holds the lease"
DEVICES = 20  # per fleet: one fleet per host, and one more after the failover
READINGS = 5
KEY_BASE = 700_000


# ---- the lease on each backend ---------------------------------------------------------------------
def test_publisher_lease_on_sqlite_is_always_held(tmp_path):
    store = SqliteStore(tmp_path / "hub.sqlite")
    first, second = store.publisher_lease(), store.publisher_lease()
    assert first.hold() and second.hold()  # one process owns the file: there is no one to leave it to
    first.release()
    assert second.hold()


def terminate_holder(pg_url: str) -> None:
    """End the lease holder's database session from outside, as a dropped connection or a dead host does."""
    with psycopg.connect(pg_url, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT pg_terminate_backend(pid, %s) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s"
            " AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (WAIT_S * 1000, PUBLISHER_LOCK),  # waits until the session has ended
        ).fetchall()
    assert ended == [(True,)]


def test_publisher_lease_on_postgres_admits_one_holder_until_it_releases_or_disconnects(pg_url):
    first, second, third = (PostgresStore(pg_url).publisher_lease() for _ in range(3))
    assert first.hold()
    assert not second.hold() and not third.hold()
    assert first.hold()  # held, not taken again: still the one holder
    first.release()
    assert second.hold()
    assert not first.hold() and not third.hold()
    terminate_holder(pg_url)
    assert not second.hold()  # its session is gone: it knows it no longer holds the lease ...
    assert third.hold()  # ... and another takes it
    assert not second.hold()  # a lost holder tries again like any other, and finds it taken
    third.release()
    assert second.hold()
    second.release()


# ---- hand-over, and two hosts on one database --------------------------------------------------
def send_readings(port: int, key_base: int, seed: int) -> None:
    fleet = fl.Fleet(("127.0.0.1", port), DEVICES, key_base, readings=READINGS, window_s=1.0, base_s=0.2,
                     ceiling_s=1.0, sockets=4, rng=random.Random(seed))
    try:
        report = fleet.run(WAIT_S)
    finally:
        fleet.close()
    assert report["unacked"] == 0, report


def wait_outbox_empty(store: PostgresStore) -> None:
    wait_for(lambda: not store.unpublished(), WAIT_S, "every message marked published (PUBACK)", step=0.05)


def assert_each_once(subscriber: MqttSubscriber, count: int) -> None:
    subscriber.wait_distinct(count, WAIT_S)
    keys = subscriber.keys()
    twice = sorted({k for k in keys if keys.count(k) > 1})
    assert not twice, f"{len(twice)} messages published twice, e.g. {twice[:5]}"
    assert len(keys) == count


def test_a_publisher_whose_lease_session_ends_stops_and_another_takes_over(pg_url, mqtt_broker, subscriber):
    store = PostgresStore(pg_url, keyring=keyseal.keyring_from())
    store.register_device(KEY_ID, DEVICE, ROOT)
    hub, dev = Hub(store), device_channel()
    first = MqttOut(store, mqtt_broker.host, mqtt_broker.port, client_id="first").start()
    wait_for(first.publishing, WAIT_S, "the first publisher to take the lease")
    other_host = PostgresStore(pg_url)
    second = MqttOut(other_host, mqtt_broker.host, mqtt_broker.port, client_id="second").start()
    try:
        for i in range(5):
            hub.handle(dev.seal(b"before %d" % i))
        subscriber.wait_distinct(5, WAIT_S)
        wait_outbox_empty(store)
        assert not second.publishing()
        terminate_holder(pg_url)  # the first one's lease connection drops
        wait_for(lambda: not first.publishing() and second.publishing(), WAIT_S, "the second to take over")
        for i in range(5):
            hub.handle(dev.seal(b"after %d" % i))
        wait_outbox_empty(store)
        assert_each_once(subscriber, 10)
        assert second.counters["acked"] == 5
    finally:
        first.stop()
        second.stop()
        other_host.close()


def test_two_hosts_publish_each_message_once_and_the_survivor_takes_over(pg_url, mqtt_broker, subscriber):
    store = PostgresStore(pg_url, keyring=keyseal.keyring_from())
    fl.register(store, 3 * DEVICES, KEY_BASE)
    per_fleet = DEVICES * READINGS
    # Both with the default MQTT client id, as two hosts installed from one unit file are.
    args = ["--db", pg_url, "--mqtt", f"mqtt://{mqtt_broker.host}:{mqtt_broker.port}"]
    with HubProcess(args) as first:
        first.wait_for(PUBLISHING)
        with HubProcess(args) as second:
            second.wait_for(STANDING_BY)
            with ThreadPoolExecutor(2) as pool:  # readings to both hosts at once
                sent = [pool.submit(send_readings, first.port, KEY_BASE, 1),
                        pool.submit(send_readings, second.port, KEY_BASE + DEVICES, 2)]
                for f in sent:
                    f.result()
            wait_outbox_empty(store)
            assert_each_once(subscriber, 2 * per_fleet)
            # A standing-by publisher never reaches for the broker: no clash over the client id.
            assert not [x for x in second.lines if "MQTT connected" in x]
            first.proc.kill()  # SIGKILL: no release, PostgreSQL ends its session and frees the lock
            first.proc.wait()
            second.wait_for(PUBLISHING, timeout=WAIT_S)
            send_readings(second.port, KEY_BASE + 2 * DEVICES, 3)
            wait_outbox_empty(store)
            assert_each_once(subscriber, 3 * per_fleet)  # the outbox was empty at the kill: none again
            assert second.stop() == 0
    expected = {f"{KEY_BASE + i}:{n}" for i in range(3 * DEVICES) for n in range(READINGS)}
    assert set(subscriber.keys()) == expected
