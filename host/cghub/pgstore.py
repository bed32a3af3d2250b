"""The hub's store on PostgreSQL (psycopg 3): the scale-out backend, shared by several hub processes.

    cellguard hub serve --db postgresql://hub@db.example/hub --workers 2

The schema is SQLite's (cghub.store), in PostgreSQL's types, created and changed by the versioned
migrations below: each runs once, in its own transaction, recorded in `schema_migrations`; start-up
applies what is missing under an advisory lock, so N workers starting together apply each once.

Several workers, one truth. A hub caches each key's row; with one database shared by many
processes that cache may be stale. So each batch is ONE transaction that starts by locking the rows
of the batch's key ids (`SELECT ... ORDER BY key_id FOR UPDATE`: always in key id order, so two
workers never deadlock) and returning them; the hub drops what it cached for a key whose committed
state moved, and reloads it inside the transaction. A second worker holding the same datagram waits
on the row lock, then sees the first one's accepted row and answers a duplicate; a downlink
sequence number is read and advanced under the lock, so none is sealed twice. `messages` rows are
written in the same transaction as the replay window: exactly once, by construction.

One MQTT publisher per database, whichever host it runs on: the publisher's lease is a session-level
advisory lock held on a connection of its own (`PgPublisherLease`); PostgreSQL frees it when that
session ends, so a process that died hands publishing over without anyone releasing anything.
"""

from __future__ import annotations

import threading

import psycopg

from cghub import pgarrays
from cghub.keyseal import Keyring
from cghub.pgarrays import Byteas as BA
from cghub.pgarrays import Float8s as F8
from cghub.pgarrays import Int4s as I4
from cghub.pgarrays import Int8s as I8
from cghub.pgarrays import Texts as TX
from cghub.store import Batch, Command, Device, Locked, PublisherLease, SqlReads, Store, check_registration

ADVISORY_LOCK = 0x63676875  # "cghu": serialises migrations between processes starting together
PUBLISHER_LOCK = 0x63676870  # "cghp": held, for its whole session, by the database's one MQTT publisher
# The lease's connection: PostgreSQL ends a session whose peer went silent (a host lost, a cut network)
# after ~11 s of keepalives instead of the system's hours, freeing the lock for another host; and our
# side gives up on a dead link as soon, so a lost holder stops publishing. Unix sockets ignore them.
LEASE_SESSION = ("SET tcp_keepalives_idle = 5", "SET tcp_keepalives_interval = 2", "SET tcp_keepalives_count = 3")
LEASE_CLIENT = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
                "tcp_user_timeout": 10_000, "connect_timeout": 10}

# Versioned migrations: append, never edit one that shipped.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
CREATE TABLE devices (
    key_id BIGINT PRIMARY KEY, device_id TEXT NOT NULL, root_key BYTEA NOT NULL,
    modes TEXT NOT NULL DEFAULT 'any', ccm_tag INTEGER NOT NULL DEFAULT 8, hmac_tag INTEGER NOT NULL DEFAULT 16,
    retired INTEGER NOT NULL DEFAULT 0, suspended INTEGER NOT NULL DEFAULT 0, failures BIGINT NOT NULL DEFAULT 0,
    up_highest BIGINT NOT NULL DEFAULT -1, up_bits TEXT NOT NULL DEFAULT '0',
    down_seq BIGINT NOT NULL DEFAULT 0, unlocked_seen INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX devices_device_id ON devices (device_id);
CREATE TABLE accepted (
    key_id BIGINT NOT NULL, seq BIGINT NOT NULL, digest BYTEA NOT NULL, at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (key_id, seq)
);
CREATE TABLE commands (
    id BIGSERIAL PRIMARY KEY, key_id BIGINT NOT NULL, record BYTEA NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued', down_seq BIGINT, datagram BYTEA, sent INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX commands_pending ON commands (key_id, state);
CREATE TABLE messages (
    id BIGSERIAL PRIMARY KEY, at DOUBLE PRECISION NOT NULL, device_id TEXT NOT NULL, key_id BIGINT NOT NULL,
    seq BIGINT NOT NULL, kind TEXT NOT NULL, mode TEXT NOT NULL, unlocked INTEGER NOT NULL, payload BYTEA NOT NULL,
    UNIQUE (key_id, seq)
);
CREATE TABLE changes (mark BIGSERIAL PRIMARY KEY, key_id BIGINT NOT NULL);
""",
    ),
    (2, "ALTER TABLE devices ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;"
        " ALTER TABLE accepted ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;"),
    # The MQTT outbox: a message waits here until the broker acknowledged it (cghub.mqttout).
    (3, "ALTER TABLE messages ADD COLUMN published INTEGER NOT NULL DEFAULT 0;"
        " CREATE INDEX messages_unpublished ON messages (id) WHERE published = 0;"),
    # OTA images (cghub.updates), kept once by SHA-256, and which one each key id downloads.
    (4, "CREATE TABLE update_images (sha256 BYTEA PRIMARY KEY, image BYTEA NOT NULL, version TEXT NOT NULL);"
        " CREATE TABLE update_targets (key_id BIGINT PRIMARY KEY, sha256 BYTEA NOT NULL,"
        " published TIMESTAMPTZ NOT NULL DEFAULT now());"),
    # How far each key's offer and download got (cghub.updates; written with the hub's batches).
    (5, "ALTER TABLE update_targets ADD COLUMN state TEXT NOT NULL DEFAULT 'offered',"
        " ADD COLUMN reason TEXT NOT NULL DEFAULT '', ADD COLUMN chunk INTEGER NOT NULL DEFAULT 1024,"
        " ADD COLUMN offered_at DOUBLE PRECISION, ADD COLUMN last_req DOUBLE PRECISION,"
        " ADD COLUMN served_bytes BIGINT NOT NULL DEFAULT 0;"),
    # Provisioning runs (cgdev.provision): a re-run of a unit whose run was cut short is recognised
    # by its IMEI and ICCID (docs/provisioning.md, "Interrupted runs").
    (6, "CREATE TABLE provisioning_runs (key_id BIGINT PRIMARY KEY, device_id TEXT NOT NULL, imei TEXT,"
        " iccid TEXT, finished INTEGER NOT NULL DEFAULT 0);"
        " CREATE INDEX provisioning_runs_unit ON provisioning_runs (imei, iccid);"),
]

_DEVICE_COLS = (
    "key_id, device_id, root_key, modes, ccm_tag, hmac_tag, retired, suspended, failures, up_highest, up_bits,"
    " down_seq, unlocked_seen, epoch"
)
_COMMAND_COLS = "id, key_id, record, state, down_seq, datagram, sent"


def _columns(rows: list[tuple], *kinds: type[list]) -> list[list]:
    """Rows as column lists of the given array kinds (cghub.pgarrays): what an unnest() takes."""
    cols = zip(*rows, strict=True) if rows else [()] * len(kinds)
    return [kind(c) for kind, c in zip(kinds, cols, strict=True)]


def migrate(conn: psycopg.Connection) -> list[int]:
    """Apply the migrations this database lacks; returns the versions applied now (idempotent)."""
    applied_now = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        have = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        for version, sql in MIGRATIONS:
            if version in have:
                continue
            conn.execute(sql)
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            applied_now.append(version)
    return applied_now


class PgPublisherLease(PublisherLease):
    """The publisher's lease on PostgreSQL: `pg_try_advisory_lock` on a connection used for nothing else.
    The lock lives as long as that session: held while the connection answers; lost, and not taken
    again in the same call, when it does not (the publisher stops before another process can start)."""

    def __init__(self, url: str):
        self.url = url
        self._conn: psycopg.Connection | None = None
        self._held = False

    def hold(self) -> bool:
        try:
            if self._held:
                self._conn.execute("SELECT 1")  # the session answers: the lock is still ours
            else:
                self._held = self._try_take()
        except psycopg.Error:  # the session is gone, and the lock with it (or it could not be reached)
            self.release()
        return self._held

    def _try_take(self) -> bool:
        if self._conn is None:
            self._conn = psycopg.connect(self.url, autocommit=True, **LEASE_CLIENT)
            for sql in LEASE_SESSION:
                self._conn.execute(sql)
        return bool(self._conn.execute("SELECT pg_try_advisory_lock(%s)", (PUBLISHER_LOCK,)).fetchone()[0])

    def release(self) -> None:
        held, self._held = self._held, False
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if held and not conn.broken:
            try:  # freed now: closing alone frees it only once the server has seen the session end
                conn.execute("SELECT pg_advisory_unlock(%s)", (PUBLISHER_LOCK,))
            except psycopg.Error:
                pass  # the session is ending anyway, and the lock with it
        conn.close()


class PostgresStore(SqlReads, Store):
    """`Store` on PostgreSQL. One connection for the hub's batches and one for everything else, so an
    operator's call in this process never lands inside a batch's transaction."""

    shared = True  # several processes may write the same rows: batches lock what they touch

    def __init__(self, url: str, keyring: Keyring | None = None):
        self.url = url
        self.keyring = keyring
        self._hot = self._connect()
        self._admin = self._connect()
        self._hot_lock = threading.RLock()
        self._admin_lock = threading.RLock()
        self.migrated = migrate(self._admin)
        self._batch_owner: int | None = None  # the thread whose batch transaction is open
        self._locked: set[int] = set()

    # ---- helpers ------------------------------------------------------------------------------------
    # A connection the server dropped (a PostgreSQL restart, a failover, an idle timeout) is replaced
    # before it is used again: the hub loses the batch that hit the break (not answered, so the devices
    # retransmit), never its ability to serve.
    def _connect(self) -> psycopg.Connection:
        conn = psycopg.connect(self.url, autocommit=True)
        pgarrays.register(conn)  # the batch's columns go out as arrays packed in one call each
        return conn

    def _adm(self) -> psycopg.Connection:
        if self._admin.broken or self._admin.closed:
            self._admin = self._connect()
        return self._admin

    def _begin(self, statements: list[tuple[str, tuple]] = ()) -> list[list[tuple]]:
        """BEGIN, and the transaction's first statements in the same round trip: their rows."""
        if self._hot.broken or self._hot.closed:
            self._hot = self._connect()
        try:
            return self._begin_on(statements)
        except psycopg.OperationalError:
            if not self._hot.broken:
                raise
            self._hot = self._connect()  # dropped while idle: nothing was done on it yet, so once more
            return self._begin_on(statements)

    def _begin_on(self, statements: list[tuple[str, tuple]]) -> list[list[tuple]]:
        try:
            with self._hot.pipeline():
                self._hot.execute("BEGIN")
                curs = [self._hot.cursor() for _ in statements]
                for cur, (sql, args) in zip(curs, statements, strict=True):
                    cur.execute(sql, args)
            return [cur.fetchall() for cur in curs]
        except BaseException:
            if not self._hot.broken:
                self._end("ROLLBACK")  # the statement failed on a live connection: end its transaction
            raise

    def _end(self, sql: str) -> None:
        try:
            self._hot.execute(sql)
        except psycopg.OperationalError:
            if sql != "ROLLBACK":
                raise  # the commit's outcome is unknown to us: the batch is not answered

    @property
    def _in_batch(self) -> bool:
        # Inside its batch the hub's reads must run in the batch's transaction (same connection, same
        # locks); any other thread's reads go to the other connection.
        return self._batch_owner == threading.get_ident()

    def _rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        if self._in_batch:
            return self._hot.execute(sql, args).fetchall()
        with self._admin_lock:
            try:
                return self._adm().execute(sql, args).fetchall()
            except psycopg.OperationalError:  # a read is safe to repeat on a new connection
                return self._adm().execute(sql, args).fetchall()

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        return self._rows(sql.replace("?", "%s"), args)  # the shared queries (SqlReads) use `?`

    def publish_image(self, digest: bytes, image: bytes, version: str, key_ids: list[int]) -> None:
        self._write_many(
            ["INSERT INTO update_images (sha256, image, version) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
             "INSERT INTO update_targets (key_id, sha256) VALUES (?, ?)"
             " ON CONFLICT (key_id) DO UPDATE SET sha256 = EXCLUDED.sha256, published = now()"],
            [[(digest, image, version)], [(k, digest) for k in key_ids]],
        )

    def publish_update(self, image: bytes, sha256: bytes, version: str, key_ids: list[int], chunk: int) -> None:
        self._write_many(
            ["INSERT INTO update_images (sha256, image, version) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
             "INSERT INTO update_targets (key_id, sha256, state, reason, chunk, offered_at, last_req, served_bytes)"
             " VALUES (?, ?, 'offered', '', ?, NULL, NULL, 0) ON CONFLICT (key_id) DO UPDATE SET"
             " sha256 = EXCLUDED.sha256, published = now(), state = 'offered', reason = '', chunk = EXCLUDED.chunk,"
             " offered_at = NULL, last_req = NULL, served_bytes = 0",
             "INSERT INTO changes (key_id) VALUES (?)"],
            [[(sha256, bytes(image), version)], [(k, sha256, chunk) for k in key_ids], [(k,) for k in key_ids]],
        )

    def _write_many(self, statements: list[str], rows: list[list[tuple]]) -> None:
        with self._admin_lock, self._adm().transaction():
            cur = self._admin.cursor()
            for sql, args in zip(statements, rows, strict=True):
                if args:
                    cur.executemany(sql.replace("?", "%s"), args)

    def _swap_key(self, key_id: int, new: bytes, old: bytes) -> int:
        with self._admin_lock:
            return self._adm().execute(
                "UPDATE devices SET root_key=%s WHERE key_id=%s AND root_key=%s", (new, key_id, old)
            ).rowcount

    def _device(self, r: tuple, with_key: bool = True) -> Device:
        root = self._open_key(r[0], bytes(r[2])) if with_key else b""
        return Device(
            r[0], r[1], root, r[3], r[4], r[5], r[6], r[7], r[8], r[9], int(r[10]), r[11], r[12], r[13]
        )

    # ---- provisioning and operators -----------------------------------------------------------------
    def register_device(self, key_id, device_id, root_key, modes="any", ccm_tag=8, hmac_tag=16, replace=False):
        check_registration(root_key, modes, ccm_tag, hmac_tag)
        sealed = self._seal(key_id, root_key)
        with self._admin_lock, self._adm().transaction():
            db = self._admin
            if db.execute("SELECT 1 FROM devices WHERE key_id=%s", (key_id,)).fetchone():
                raise ValueError(f"key id {key_id} already used (key ids are never reused)")
            live = [r[0] for r in db.execute(
                "SELECT key_id FROM devices WHERE device_id=%s AND retired=0 FOR UPDATE", (device_id,))]
            if live and not replace:
                raise ValueError(f"device {device_id} already has a live key (use --replace to rotate)")
            for old in live:
                db.execute("UPDATE devices SET retired=1 WHERE key_id=%s", (old,))
                db.execute("INSERT INTO changes (key_id) VALUES (%s)", (old,))
            db.execute(
                "INSERT INTO devices (key_id, device_id, root_key, modes, ccm_tag, hmac_tag) VALUES (%s,%s,%s,%s,%s,%s)",
                (key_id, device_id, sealed, modes, ccm_tag, hmac_tag),
            )
            db.execute("INSERT INTO changes (key_id) VALUES (%s)", (key_id,))

    def queue_command(self, key_id: int, record: bytes) -> int:
        with self._admin_lock, self._adm().transaction():
            db = self._admin
            if db.execute("SELECT 1 FROM devices WHERE key_id=%s", (key_id,)).fetchone() is None:
                raise ValueError(f"unknown key id {key_id}")
            cid = db.execute("INSERT INTO commands (key_id, record) VALUES (%s, %s) RETURNING id", (key_id, bytes(record))).fetchone()[0]
            db.execute("INSERT INTO changes (key_id) VALUES (%s)", (key_id,))
        return int(cid)

    def commands(self, key_id: int) -> list[Command]:
        rows = self._rows(f"SELECT {_COMMAND_COLS} FROM commands WHERE key_id=%s ORDER BY id", (key_id,))
        return [Command(*r) for r in rows]

    def devices(self) -> list[Device]:
        return [self._device(r, with_key=False) for r in self._rows(f"SELECT {_DEVICE_COLS} FROM devices ORDER BY key_id")]

    def publisher_lease(self) -> PgPublisherLease:
        return PgPublisherLease(self.url)

    def mark_published(self, ids: list[int]) -> None:
        if ids:
            with self._admin_lock:
                self._adm().execute("UPDATE messages SET published=1 WHERE id = ANY(%s)", (list(ids),))

    # ---- the hub's hot path ---------------------------------------------------------------------------
    def begin_batch(self, key_ids, since: int | None = None) -> Locked:
        """Open the batch's transaction and lock the rows of `key_ids`; returns them as committed, and
        with `since` the change log after that mark, all in one round trip. Everything until
        commit_batch() or abort_batch() runs inside this transaction."""
        self._hot_lock.acquire()
        try:
            ids = sorted(set(key_ids))
            statements = []
            if since is not None:
                statements.append(("SELECT mark, key_id FROM changes WHERE mark > %s ORDER BY mark", (since,)))
            if ids:
                statements.append((f"SELECT {_DEVICE_COLS} FROM devices WHERE key_id = ANY(%b)"
                                   " ORDER BY key_id FOR UPDATE", (I8(ids),)))  # fmt: skip
            results = self._begin(statements)
            self._batch_owner = threading.get_ident()
            changes = results.pop(0) if since is not None else []
            rows = results[0] if ids else []
            self._locked = {r[0] for r in rows}
            return Locked(
                {r[0]: self._device(r, with_key=False) for r in rows},  # the hub has the keys it cached
                changes[-1][0] if changes else since,
                {r[1] for r in changes},
            )
        except BaseException:
            if self._in_batch:
                self.abort_batch()  # rolls back and releases the lock
            else:
                self._hot_lock.release()  # BEGIN or the lock failed: _begin ended the transaction
            raise

    def abort_batch(self) -> None:
        if not self._in_batch:
            return
        try:
            self._end("ROLLBACK")
        finally:
            self._batch_owner = None
            self._locked = set()
            self._hot_lock.release()

    def device(self, key_id: int) -> Device | None:
        rows = self._rows(f"SELECT {_DEVICE_COLS} FROM devices WHERE key_id=%s", (key_id,))
        return self._device(rows[0]) if rows else None

    def pending_commands(self, key_id: int) -> list[Command]:
        rows = self._rows(f"SELECT {_COMMAND_COLS} FROM commands WHERE key_id=%s AND state!='done' ORDER BY id", (key_id,))
        return [Command(*r) for r in rows]

    def commit_batch(self, batch: Batch) -> None:
        own = self._in_batch
        if not own:
            if not batch:
                return
            self._hot_lock.acquire()
            try:
                self._begin()
            except BaseException:
                self._hot_lock.release()
                raise
            self._batch_owner = threading.get_ident()
        try:
            self._write(batch)  # and COMMIT, in the same round trip
        except BaseException:
            self._end("ROLLBACK")
            raise
        finally:
            self._batch_owner = None
            self._locked = set()
            self._hot_lock.release()

    def _write(self, batch: Batch) -> None:
        # One statement per table, its rows as arrays (unnest): PostgreSQL plans and runs one statement
        # instead of one per row, which halved its CPU per datagram; the writes go in one pipeline. The arrays
        # travel in binary (%b): psycopg's text arrays quote every element with a regex, a quarter of the
        # hub's CPU per datagram; and each is packed in one call (cghub.pgarrays), not element by element.
        cur = self._hot.cursor()
        locked = [d for k, d in batch.devices.items() if k in self._locked]
        loose = [d for k, d in batch.devices.items() if k not in self._locked]
        with self._hot.pipeline():
            if locked:  # rows this batch holds locked: its values are the truth
                cur.execute(
                    "UPDATE devices AS d SET failures=v.f, up_highest=v.h, up_bits=v.b, down_seq=v.s, unlocked_seen=v.u,"
                    " epoch=v.e, suspended=v.p FROM unnest(%b::bigint[], %b::bigint[], %b::bigint[], %b::text[],"
                    " %b::bigint[], %b::int[], %b::int[], %b::int[]) AS v(k, f, h, b, s, u, e, p) WHERE d.key_id = v.k",
                    _columns([(d.key_id, d.failures, d.up_highest, str(d.up_bits), d.down_seq, d.unlocked_seen, d.epoch,
                               d.suspended) for d in locked], I8, I8, I8, TX, I8, I4, I4, I4),
                )
            if loose:  # failure counts flushed without a lock: never move another worker's window or sequence
                cur.executemany(
                    "UPDATE devices SET failures=GREATEST(failures, %s), suspended=GREATEST(suspended, %s) WHERE key_id=%s",
                    [(d.failures, d.suspended, d.key_id) for d in loose],
                )
            if batch.accepted:  # one row per (key id, seq): ON CONFLICT may not touch a row twice in one statement
                rows = {(a.key_id, a.seq): (a.key_id, a.seq, a.digest, a.at, a.epoch) for a in batch.accepted}
                cur.execute(
                    "INSERT INTO accepted (key_id, seq, digest, at, epoch)"
                    " SELECT * FROM unnest(%b::bigint[], %b::bigint[], %b::bytea[], %b::float8[], %b::int[])"
                    " ON CONFLICT (key_id, seq) DO UPDATE SET digest=EXCLUDED.digest, at=EXCLUDED.at, epoch=EXCLUDED.epoch",
                    _columns(list(rows.values()), I8, I8, BA, F8, I4),
                )
            if batch.prune:
                cur.execute(
                    "DELETE FROM accepted AS a USING unnest(%b::bigint[], %b::bigint[]) AS v(k, s)"
                    " WHERE a.key_id = v.k AND a.seq < v.s",
                    _columns(list(batch.prune.items()), I8, I8),
                )
            if batch.messages:  # WITH ORDINALITY: ids in the batch's order (the MQTT outbox's order)
                cur.execute(
                    "INSERT INTO messages (at, device_id, key_id, seq, kind, mode, unlocked, payload)"
                    " SELECT at, dev, k, s, kind, mode, u, p FROM unnest(%b::float8[], %b::text[], %b::bigint[],"
                    " %b::bigint[], %b::text[], %b::text[], %b::int[], %b::bytea[]) WITH ORDINALITY"
                    " AS v(at, dev, k, s, kind, mode, u, p, n) ORDER BY n ON CONFLICT (key_id, seq) DO NOTHING",
                    _columns([(m.at, m.device_id, m.key_id, m.seq, m.kind, m.mode, int(m.unlocked), m.payload)
                              for m in batch.messages], F8, TX, I8, I8, TX, TX, I4, BA),
                )
            if batch.commands:
                cur.executemany(
                    "UPDATE commands SET state=%s, down_seq=%s, datagram=%s, sent=%s WHERE id=%s",
                    [(c.state, c.down_seq, c.datagram, c.sent, c.id) for c in batch.commands.values()],
                )
            if batch.updates:  # only the target read: one published since is left as it is
                cur.executemany(
                    "UPDATE update_targets SET state=%s, reason=%s, offered_at=%s, last_req=%s, served_bytes=%s"
                    " WHERE key_id=%s AND sha256=%s",
                    [(u.state, u.reason, u.offered_at, u.last_req, u.served_bytes, k, u.sha256)
                     for k, u in batch.updates.items()],
                )
            cur.execute("COMMIT")  # an error before it skips it (pipeline): the caller rolls back

    def close(self) -> None:
        if self._in_batch:
            self.abort_batch()
        self._hot.close()
        self._admin.close()
