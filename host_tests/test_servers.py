"""The real servers the hub's tests stand on: a PostgreSQL server and an MQTT broker, each its own process."""

import threading

import psycopg
from paho.mqtt import client as mqtt


def test_postgres_is_a_real_server_with_a_database_per_test(postgres, pg_url):
    with psycopg.connect(pg_url) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        conn.execute("CREATE TABLE t (x int)")
    assert int(version.split(".")[0]) >= 16
    other = postgres.new_database()
    with psycopg.connect(other) as conn:  # another test's database does not see this one's tables
        assert conn.execute("SELECT to_regclass('t')").fetchone()[0] is None


def _client(broker, name):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def test_mqtt_broker_delivers_qos1_and_restarts_on_its_port(mqtt_broker):
    got = threading.Event()
    subscribed = threading.Event()
    sub = _client(mqtt_broker, "sub")
    sub.on_message = lambda c, u, m: got.set() if m.payload == b"hi" and m.qos == 1 else None
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.subscribe("cellguard/#", qos=1)
    assert subscribed.wait(30)
    pub = _client(mqtt_broker, "pub")
    pub.publish("cellguard/d/reading", b"hi", qos=1).wait_for_publish(30)
    assert got.wait(30)
    for c in (sub, pub):
        c.loop_stop()
        c.disconnect()
    port = mqtt_broker.port
    mqtt_broker.restart()
    assert mqtt_broker.port == port
    again = _client(mqtt_broker, "again")
    again.publish("cellguard/d/reading", b"x", qos=1).wait_for_publish(30)
    again.loop_stop()
    again.disconnect()
