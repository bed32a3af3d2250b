"""The hub's durable state behind one small interface, and its SQLite implementation.

The server (cghub.server) talks only to `Store`: it loads a device's row, its recent accepted
sequences and its pending commands into its own cache, and writes back everything one batch of
datagrams changed with `commit_batch()`, in ONE transaction, before any answer for that batch leaves
(durability before answer). Operators' writes (register-device, queue, publish) go through the same
store and leave a row in a change log, so a running hub (this process or another) drops exactly the
cache entries they touched (`changes_since`).

Another backend (PostgreSQL, several workers) implements the same methods; the contract is in the
docstrings. Keep it stable: add methods, do not rename them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from pathlib import Path

from cghub import keyseal
from cghub.keyseal import Keyring

MODES = ("any", "encrypt", "sign")
_json_str = json.encoder.encode_basestring_ascii  # what json.dumps uses for a str (ensure_ascii)


@dataclass
class Device:
    """One key id's row: identity and root key (set at registration), and the hub's state for it."""

    key_id: int
    device_id: str
    root_key: bytes
    modes: str = "any"
    ccm_tag: int = 8
    hmac_tag: int = 16
    retired: int = 0
    suspended: int = 0
    failures: int = 0  # failed verifications in the current epoch (persisted lazily, see server)
    up_highest: int = -1  # the uplink replay window: highest accepted sequence ...
    up_bits: int = 0  # ... and the bitmap of the 64 below it
    down_seq: int = 0  # the next downlink sequence number (every lower one may have been used)
    unlocked_seen: int = 0
    epoch: int = 0  # the key epoch both ends are in (protocol.md section 9)

    def __getitem__(self, name: str):  # row-style access, as the callers of the sqlite3.Row era use
        return getattr(self, name)

    def keys(self) -> list[str]:
        return [f.name for f in fields(self)]


@dataclass
class Command:
    id: int
    key_id: int
    record: bytes
    state: str = "queued"  # queued -> sent (sealed into a command datagram) -> done (DACKed)
    down_seq: int | None = None
    datagram: bytes | None = None
    sent: int = 0

    def __getitem__(self, name: str):
        return getattr(self, name)


@dataclass
class Accepted:
    key_id: int
    seq: int
    digest: bytes  # SHA-256 of the datagram: duplicates and nonce reuse are recognised by it
    at: float
    epoch: int = 0


@dataclass
class Message:
    """An accepted uplink, as the fleet's applications get it (the JSON line of `serve --out`)."""

    at: float
    device_id: str
    key_id: int
    seq: int
    kind: str  # reading, hello, tamper, dack, chunk_req
    mode: str  # encrypt or sign
    unlocked: bool
    payload: bytes

    def as_json(self) -> dict:
        return {
            "at": round(self.at, 3),
            "device": self.device_id,
            "key_id": self.key_id,
            "seq": self.seq,
            "type": self.kind,
            "mode": self.mode,
            "unlocked": self.unlocked,
            "payload_hex": self.payload.hex(),
        }

    def json_line(self) -> str:
        """as_json() as json.dumps(sort_keys=True) writes it, without its per-call cost (hot path)."""
        return (
            '{"at": %r, "device": %s, "key_id": %d, "mode": "%s", "payload_hex": "%s", "seq": %d, "type": "%s",'
            ' "unlocked": %s}\n'
            % (
                round(self.at, 3),
                _json_str(self.device_id),
                self.key_id,
                self.mode,
                self.payload.hex(),
                self.seq,
                self.kind,
                "true" if self.unlocked else "false",
            )
        )


@dataclass
class UpdateTarget:
    """A key id's published update (cghub.updates): which image, its size and header, and how far the
    offer got. The image's bytes stay in the store (`image_bytes`)."""

    key_id: int
    sha256: bytes
    version: str
    size: int
    header: bytes  # the image's first 32 bytes: its MCUboot header (the version)
    chunk: int
    state: str = "offered"  # offered -> downloading -> installed, refused or superseded (UPDATE STATUS)
    reason: str = ""
    offered_at: float | None = None
    last_req: float | None = None
    served_bytes: int = 0

    def __getitem__(self, name: str):
        return getattr(self, name)


@dataclass
class Batch:
    """What one batch of datagrams changed; `Store.commit_batch` writes it in one transaction."""

    devices: dict[int, Device] = field(default_factory=dict)  # hub-state columns written back
    accepted: list[Accepted] = field(default_factory=list)
    prune: dict[int, int] = field(default_factory=dict)  # key id -> forget accepted rows below this seq
    messages: list[Message] = field(default_factory=list)
    commands: dict[int, Command] = field(default_factory=dict)  # id -> state, down_seq, datagram, sent
    updates: dict[int, UpdateTarget] = field(default_factory=dict)  # key id -> state, reason, offered_at, ...

    def __bool__(self) -> bool:
        return bool(self.devices or self.accepted or self.messages or self.commands or self.updates)


class PublisherLease:
    """Which process publishes a database's outbox to MQTT (cghub.mqttout): one at a time, across every
    process and host that serves the database, so no row goes out from two publishers at once.

    The publisher calls hold() before each read of the outbox: True while this process holds the
    lease (taking it when it is free), False while another does, or once this process lost it. This
    one is always held: a store one process owns (SQLite) has no other publisher to leave room for.
    """

    def hold(self) -> bool:
        return True

    def release(self) -> None:
        """Give the lease up (the publisher stops): another process may take it."""


@dataclass
class Locked:
    """What a shared store's begin_batch() read as the batch's transaction opened (one round trip)."""

    devices: dict[int, Device]  # the batch's rows, locked, as committed (root keys not opened)
    mark: int | None = None  # the change log's newest mark, when asked for changes since one
    changed: set[int] = field(default_factory=set)  # key ids operators changed after that mark


class Store(ABC):
    """The operations the hub needs. One hub process owns a key id's hub-state columns at a time.

    Root keys are stored sealed (cghub.keyseal): `keyring` wraps them at registration and opens them
    when the hub loads a device. A store without a keyring serves stats and queues, never keys.
    """

    keyring: Keyring | None = None

    def _seal(self, key_id: int, root_key: bytes) -> bytes:
        return keyseal.require(self.keyring, "registering a device").wrap(key_id, root_key)

    def _open_key(self, key_id: int, blob: bytes) -> bytes:
        return keyseal.require(self.keyring, "loading a device's key").unwrap(key_id, blob)

    # A store shared by several hub processes (PostgreSQL) locks the rows a batch touches: the hub
    # calls begin_batch(key ids) first and gets their committed rows back, to drop what it cached for
    # a key another process moved, and (since=mark) the change log after its mark in the same round
    # trip. A store one process owns (SQLite) returns None: the cache is the truth.
    shared = False

    def begin_batch(self, key_ids, since: int | None = None) -> Locked | None:
        """Start a batch's transaction; shared stores lock and return the rows of `key_ids`, and
        with `since` the key ids the change log names after that mark."""
        return None

    def abort_batch(self) -> None:
        """End a batch begun with begin_batch() without writing anything."""
        return None

    @abstractmethod
    def publisher_lease(self) -> PublisherLease:
        """A new claim on publishing this store's outbox (see PublisherLease): only its holder publishes."""

    @abstractmethod
    def unpublished(self, limit: int = 1000) -> list[tuple[int, Message]]:
        """The outbox: accepted messages not yet acknowledged by the MQTT broker, oldest first."""

    @abstractmethod
    def mark_published(self, ids: list[int]) -> None:
        """The broker acknowledged these messages (PUBACK): they leave the outbox."""

    @abstractmethod
    def fleet_activity(self, since: float) -> tuple[int, int]:
        """(key ids with a datagram accepted at or after `since`, live devices that ever sent UNLOCKED)."""

    @abstractmethod
    def rewrap_keys(self) -> int:
        """Rewrap every root key not sealed under the keyring's current KEK (older KEKs, or clear keys
        from before sealing), one row at a time, each only if nobody changed it meanwhile. Returns how
        many rows were rewrapped. A running hub is not disturbed: it keeps the keys it opened."""

    # ---- provisioning and operators -----------------------------------------------------------------
    @abstractmethod
    def register_device(
        self,
        key_id: int,
        device_id: str,
        root_key: bytes,
        modes: str = "any",
        ccm_tag: int = 8,
        hmac_tag: int = 16,
        replace: bool = False,
    ) -> None:
        """A device's root key under a new key id (never reused); replace=True retires its old ids."""

    @abstractmethod
    def register_devices(self, rows: list[tuple[int, str, bytes]]) -> None:
        """Many new (key id, device id, root key) at once, one transaction (a production batch)."""

    # A provisioning run (cgdev.provision) is recorded as it starts and marked finished when the unit
    # reported; a run cut short (power lost, cable pulled) stays unfinished, so that a re-run of the
    # same unit (same IMEI, same ICCID) is recognised (docs/provisioning.md, "Interrupted runs").
    @abstractmethod
    def record_provisioning_run(self, key_id: int, device_id: str, imei: str | None, iccid: str | None) -> None:
        """A run started: key id (registered just before), device id, the unit's IMEI and ICCID."""

    @abstractmethod
    def finish_provisioning_run(self, key_id: int) -> None:
        """The run of this key id finished: the unit reported its result."""

    @abstractmethod
    def unfinished_provisioning_runs(self, imei: str, iccid: str) -> list[tuple[str, int]]:
        """(device id, key id) of this unit's runs that never finished and whose key is live, newest first."""

    @abstractmethod
    def queue_command(self, key_id: int, record: bytes) -> int:
        """Queue one downlink record for a key id; returns the command's id."""

    @abstractmethod
    def commands(self, key_id: int) -> list[Command]:
        """Every command ever queued for the key id, oldest first."""

    @abstractmethod
    def devices(self) -> list[Device]:
        """Every registered key id (for stats and publish --all)."""

    @abstractmethod
    def known_key_ids(self, key_ids: list[int]) -> set[int]:
        """Which of these key ids are registered (retired ones too); no key is unsealed to answer."""

    @abstractmethod
    def messages(self, after_id: int = 0, limit: int = 1000) -> list[tuple[int, Message]]:
        """Accepted uplinks with an id above after_id, in order: what the applications consume."""

    @abstractmethod
    def publish_update(self, image: bytes, sha256: bytes, version: str, key_ids: list[int], chunk: int) -> None:
        """Store an image once (by its SHA-256) and make it the update target of each key id, in one
        transaction: a key id's previous target is replaced, its state starts afresh ("offered")."""

    # ---- the hub's hot path ---------------------------------------------------------------------------
    @abstractmethod
    def device(self, key_id: int) -> Device | None:
        """The key id's row as committed, or None."""

    @abstractmethod
    def recent_accepted(self, key_id: int, from_seq: int) -> list[Accepted]:
        """The accepted rows of a key id with seq >= from_seq."""

    @abstractmethod
    def accepted(self, key_id: int, seq: int) -> Accepted | None:
        """One accepted row (a duplicate older than the hub keeps in memory), or None."""

    @abstractmethod
    def pending_commands(self, key_id: int) -> list[Command]:
        """The key id's commands that are not done, oldest first."""

    @abstractmethod
    def accepted_seqs(self, key_id: int) -> list[int]:
        """The accepted sequences still remembered for a key id, ascending."""

    @abstractmethod
    def update_target(self, key_id: int) -> UpdateTarget | None:
        """The key id's update target as committed (its image's size and header, never its bytes), or
        None. Its state is written with `commit_batch` (Batch.updates)."""

    @abstractmethod
    def image_bytes(self, sha256: bytes, offset: int, n: int) -> bytes:
        """Up to n bytes of a stored image from offset (b"": no such image, or past its end)."""

    @abstractmethod
    def changes_since(self, mark: int) -> tuple[int, set[int] | None]:
        """(new mark, key ids whose row or commands operators changed after `mark`). None: any.
        `changes_since(-1)` returns the current mark and None."""

    @abstractmethod
    def commit_batch(self, batch: Batch) -> None:
        """Write a batch in one transaction, durably, or raise and write nothing."""

    @abstractmethod
    def close(self) -> None: ...


SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    key_id INTEGER PRIMARY KEY, device_id TEXT NOT NULL, root_key BLOB NOT NULL,
    modes TEXT NOT NULL DEFAULT 'any', ccm_tag INTEGER NOT NULL DEFAULT 8, hmac_tag INTEGER NOT NULL DEFAULT 16,
    retired INTEGER NOT NULL DEFAULT 0, suspended INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0,
    up_highest INTEGER NOT NULL DEFAULT -1, up_bits TEXT NOT NULL DEFAULT '0',
    down_seq INTEGER NOT NULL DEFAULT 0, unlocked_seen INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS accepted (
    key_id INTEGER NOT NULL, seq INTEGER NOT NULL, digest BLOB NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (key_id, seq)
);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT, key_id INTEGER NOT NULL, record BLOB NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued', down_seq INTEGER, datagram BLOB, sent INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS commands_pending ON commands (key_id, state);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, device_id TEXT NOT NULL, key_id INTEGER NOT NULL,
    seq INTEGER NOT NULL, kind TEXT NOT NULL, mode TEXT NOT NULL, unlocked INTEGER NOT NULL, payload BLOB NOT NULL,
    UNIQUE (key_id, seq)
);
CREATE TABLE IF NOT EXISTS changes (mark INTEGER PRIMARY KEY AUTOINCREMENT, key_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS update_images (sha256 BLOB PRIMARY KEY, image BLOB NOT NULL, version TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS update_targets (
    key_id INTEGER PRIMARY KEY, sha256 BLOB NOT NULL, published REAL NOT NULL DEFAULT (julianday('now'))
);
CREATE TABLE IF NOT EXISTS provisioning_runs (
    key_id INTEGER PRIMARY KEY, device_id TEXT NOT NULL, imei TEXT, iccid TEXT,
    finished INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS provisioning_runs_unit ON provisioning_runs (imei, iccid);
"""
# Columns added after the first release: an existing database gets them on open.
_ADDED = (
    ("devices", "epoch", "INTEGER NOT NULL DEFAULT 0"),
    ("accepted", "epoch", "INTEGER NOT NULL DEFAULT 0"),
    ("update_targets", "state", "TEXT NOT NULL DEFAULT 'offered'"),
    ("update_targets", "reason", "TEXT NOT NULL DEFAULT ''"),
    ("update_targets", "chunk", "INTEGER NOT NULL DEFAULT 1024"),
    ("update_targets", "offered_at", "REAL"),
    ("update_targets", "last_req", "REAL"),
    ("update_targets", "served_bytes", "INTEGER NOT NULL DEFAULT 0"),
    ("messages", "published", "INTEGER NOT NULL DEFAULT 0"),  # the MQTT outbox (cghub.mqttout)
)
_HUB_STATE = ("failures", "up_highest", "up_bits", "down_seq", "unlocked_seen", "epoch", "suspended")


def _device(row: sqlite3.Row, open_key=None) -> Device:
    d = {k: row[k] for k in row.keys()}
    d["up_bits"] = int(d["up_bits"])  # TEXT: 64 bits do not fit SQLite's signed INTEGER
    # Opened only where the hub needs it (device()); lists for operators never carry keys.
    d["root_key"] = open_key(d["key_id"], bytes(d["root_key"])) if open_key else b""
    return Device(**d)


def _command(row: sqlite3.Row) -> Command:
    return Command(**{k: row[k] for k in row.keys()})


class SqlReads:
    """What both SQL backends do alike, written once with `?` placeholders: `_read(sql, args)` runs a
    query (PostgresStore turns `?` into `%s`), `_write_many(statements, rows)` runs statements in one
    transaction, `_swap_key(key_id, new, old)` rewrites one sealed key only if it is still `old`."""

    def register_devices(self, rows: list[tuple[int, str, bytes]]) -> None:
        for _kid, _dev, root in rows:
            if len(root) != 32:
                raise ValueError("root key must be 32 bytes")
        sealed = [(k, d, self._seal(k, r)) for k, d, r in rows]  # no KEK, no row
        self._write_many(
            ["INSERT INTO devices (key_id, device_id, root_key) VALUES (?,?,?)", "INSERT INTO changes (key_id) VALUES (?)"],
            [sealed, [(k,) for k, _, _ in rows]],
        )

    def record_provisioning_run(self, key_id: int, device_id: str, imei: str | None, iccid: str | None) -> None:
        self._write_many(
            ["INSERT INTO provisioning_runs (key_id, device_id, imei, iccid) VALUES (?,?,?,?)"],
            [[(key_id, device_id, imei, iccid)]],
        )

    def finish_provisioning_run(self, key_id: int) -> None:
        self._write_many(["UPDATE provisioning_runs SET finished=1 WHERE key_id=?"], [[(key_id,)]])

    def unfinished_provisioning_runs(self, imei: str, iccid: str) -> list[tuple[str, int]]:
        rows = self._read(
            "SELECT r.device_id, r.key_id FROM provisioning_runs r JOIN devices d ON d.key_id = r.key_id"
            " WHERE r.imei=? AND r.iccid=? AND r.finished=0 AND d.retired=0 ORDER BY r.key_id DESC",
            (imei, iccid),
        )
        return [(r[0], r[1]) for r in rows]

    def update_target(self, key_id: int) -> UpdateTarget | None:
        rows = self._read(
            "SELECT t.sha256, i.version, length(i.image), substr(i.image, 1, 32), t.chunk, t.state, t.reason,"
            " t.offered_at, t.last_req, t.served_bytes"
            " FROM update_targets t JOIN update_images i ON i.sha256 = t.sha256 WHERE t.key_id=?",
            (key_id,),
        )
        if not rows:
            return None
        r = rows[0]
        return UpdateTarget(key_id, bytes(r[0]), r[1], r[2], bytes(r[3]), r[4], r[5], r[6], r[7], r[8], r[9])

    def image_bytes(self, sha256: bytes, offset: int, n: int) -> bytes:
        rows = self._read("SELECT substr(image, ?, ?) FROM update_images WHERE sha256=?", (offset + 1, n, sha256))
        return bytes(rows[0][0]) if rows and rows[0][0] is not None else b""

    def messages(self, after_id: int = 0, limit: int = 1000) -> list[tuple[int, Message]]:
        return self._messages("id>? ORDER BY id LIMIT ?", (after_id, limit))

    def unpublished(self, limit: int = 1000) -> list[tuple[int, Message]]:
        return self._messages("published=0 ORDER BY id LIMIT ?", (limit,))

    def _messages(self, where: str, args: tuple) -> list[tuple[int, Message]]:
        rows = self._read(
            "SELECT id, at, device_id, key_id, seq, kind, mode, unlocked, payload FROM messages WHERE " + where, args
        )
        return [(r[0], Message(r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), bytes(r[8]))) for r in rows]

    def fleet_activity(self, since: float) -> tuple[int, int]:
        seen = self._read("SELECT COUNT(DISTINCT key_id) FROM accepted WHERE at>=?", (since,))[0][0]
        unlocked = self._read("SELECT COUNT(*) FROM devices WHERE unlocked_seen!=0 AND retired=0")[0][0]
        return seen, unlocked

    def recent_accepted(self, key_id: int, from_seq: int) -> list[Accepted]:
        rows = self._read("SELECT seq, digest, at, epoch FROM accepted WHERE key_id=? AND seq>=?", (key_id, from_seq))
        return [Accepted(key_id, r[0], bytes(r[1]), r[2], r[3]) for r in rows]

    def accepted(self, key_id: int, seq: int) -> Accepted | None:
        rows = self._read("SELECT digest, at, epoch FROM accepted WHERE key_id=? AND seq=?", (key_id, seq))
        return Accepted(key_id, seq, bytes(rows[0][0]), rows[0][1], rows[0][2]) if rows else None

    def known_key_ids(self, key_ids: list[int]) -> set[int]:
        """Which of these key ids are registered (retired ones too)."""
        known: set[int] = set()
        ids = list(key_ids)
        for i in range(0, len(ids), 500):  # bounded statements, whatever the fleet
            part = ids[i : i + 500]
            sql = "SELECT key_id FROM devices WHERE key_id IN (%s)" % ",".join("?" * len(part))
            known.update(r[0] for r in self._read(sql, tuple(part)))
        return known

    def image_for(self, key_id: int) -> bytes | None:
        """The OTA image published to this key id (cghub.updates), or None."""
        rows = self._read(
            "SELECT i.image FROM update_targets t JOIN update_images i ON i.sha256 = t.sha256 WHERE t.key_id=?",
            (key_id,),
        )
        return bytes(rows[0][0]) if rows else None

    def accepted_seqs(self, key_id: int) -> list[int]:
        return [r[0] for r in self._read("SELECT seq FROM accepted WHERE key_id=? ORDER BY seq", (key_id,))]

    def changes_since(self, mark: int) -> tuple[int, set[int] | None]:
        if mark < 0:
            rows = self._read("SELECT COALESCE(MAX(mark), 0) FROM changes")
            return rows[0][0], None
        rows = self._read("SELECT mark, key_id FROM changes WHERE mark>? ORDER BY mark", (mark,))
        if not rows:
            return mark, set()
        return rows[-1][0], {r[1] for r in rows}

    def max_key_id(self) -> int:
        """The highest key id ever registered (0 for none): key ids are never reused."""
        return self._read("SELECT COALESCE(MAX(key_id), 0) FROM devices")[0][0]

    def live_key_ids(self, device_id: str) -> list[int]:
        return [r[0] for r in self._read("SELECT key_id FROM devices WHERE device_id=? AND retired=0", (device_id,))]

    def set_retired(self, key_ids: list[int], retired: bool = True) -> None:
        """Retire (or take back) key ids; running hubs drop them from their caches (the change log)."""
        self._write_many(
            ["UPDATE devices SET retired=? WHERE key_id=?", "INSERT INTO changes (key_id) VALUES (?)"],
            [[(int(retired), k) for k in key_ids], [(k,) for k in key_ids]],
        )

    def rewrap_keys(self) -> int:
        ring = keyseal.require(self.keyring, "rewrapping keys")
        done = 0
        for key_id, blob in self._read("SELECT key_id, root_key FROM devices ORDER BY key_id"):
            blob = bytes(blob)
            if not ring.needs_rewrap(blob):
                continue
            root = ring.unwrap(key_id, blob) if keyseal.is_wrapped(blob) else blob  # clear: from before sealing
            done += self._swap_key(key_id, ring.wrap(key_id, root), blob)
        return done


def check_registration(root_key: bytes, modes: str, ccm_tag: int, hmac_tag: int) -> None:
    if len(root_key) != 32:
        raise ValueError("root key must be 32 bytes")
    if ccm_tag not in (8, 12, 16) or not 10 <= hmac_tag <= 32:
        raise ValueError("tag length not allowed")
    if modes not in MODES:
        raise ValueError("modes must be any, encrypt or sign")


class SqliteStore(SqlReads, Store):
    """The store in one SQLite file, WAL mode: readers (stats, the CLI) never block the hub's commits.

    synchronous=FULL: a commit is on disk (not only in the page cache) before the hub answers, so an
    acknowledged message survives a power cut, not only a killed process. One connection, guarded by
    a lock: the hub's batch thread and an operator's call in the same process never interleave.
    """

    def __init__(self, path: str | Path, synchronous: str = "FULL", keyring: Keyring | None = None):
        self.keyring = keyring
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.execute("PRAGMA busy_timeout=10000")
        with self._lock:
            self.db.executescript(SCHEMA)
            for table, column, decl in _ADDED:
                have = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
            self.db.execute("CREATE INDEX IF NOT EXISTS messages_unpublished ON messages (published, id)")

    # A transaction: BEGIN IMMEDIATE takes the write lock up front, so two writers (the hub and a
    # CLI process) queue on busy_timeout instead of failing half-way.
    class _Tx:
        def __init__(self, store: SqliteStore):
            self.store = store

        def __enter__(self):
            self.store._lock.acquire()
            try:
                self.store.db.execute("BEGIN IMMEDIATE")
            except BaseException:
                self.store._lock.release()
                raise
            return self.store.db

        def __exit__(self, exc_type, *_):
            try:
                self.store.db.execute("ROLLBACK" if exc_type else "COMMIT")
            finally:
                self.store._lock.release()

    def _tx(self) -> SqliteStore._Tx:
        return SqliteStore._Tx(self)

    def _read(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self.db.execute(sql, args).fetchall()

    # ---- provisioning and operators -----------------------------------------------------------------
    def register_device(self, key_id, device_id, root_key, modes="any", ccm_tag=8, hmac_tag=16, replace=False):
        check_registration(root_key, modes, ccm_tag, hmac_tag)
        sealed = self._seal(key_id, root_key)  # before the transaction: no KEK, no row
        with self._tx() as db:
            if db.execute("SELECT 1 FROM devices WHERE key_id=?", (key_id,)).fetchone():
                raise ValueError(f"key id {key_id} already used (key ids are never reused)")
            live = [r[0] for r in db.execute("SELECT key_id FROM devices WHERE device_id=? AND retired=0", (device_id,))]
            if live and not replace:
                raise ValueError(f"device {device_id} already has a live key (use --replace to rotate)")
            for old in live:  # key rotation: the device's previous keys are retired
                db.execute("UPDATE devices SET retired=1 WHERE key_id=?", (old,))
                db.execute("INSERT INTO changes (key_id) VALUES (?)", (old,))
            db.execute(
                "INSERT INTO devices (key_id, device_id, root_key, modes, ccm_tag, hmac_tag) VALUES (?,?,?,?,?,?)",
                (key_id, device_id, sealed, modes, ccm_tag, hmac_tag),
            )
            db.execute("INSERT INTO changes (key_id) VALUES (?)", (key_id,))

    def queue_command(self, key_id: int, record: bytes) -> int:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM devices WHERE key_id=?", (key_id,)).fetchone() is None:
                raise ValueError(f"unknown key id {key_id}")
            cur = db.execute("INSERT INTO commands (key_id, record) VALUES (?, ?)", (key_id, bytes(record)))
            db.execute("INSERT INTO changes (key_id) VALUES (?)", (key_id,))
        return int(cur.lastrowid)

    def commands(self, key_id: int) -> list[Command]:
        return [_command(r) for r in self._read("SELECT * FROM commands WHERE key_id=? ORDER BY id", (key_id,))]

    def devices(self) -> list[Device]:
        return [_device(r) for r in self._read("SELECT * FROM devices ORDER BY key_id")]

    def publisher_lease(self) -> PublisherLease:
        return PublisherLease()  # one process owns the file: its publisher is the only one

    def mark_published(self, ids: list[int]) -> None:
        if ids:
            with self._tx() as db:
                db.executemany("UPDATE messages SET published=1 WHERE id=?", [(i,) for i in ids])

    def publish_update(self, image: bytes, sha256: bytes, version: str, key_ids: list[int], chunk: int) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO update_images (sha256, image, version) VALUES (?, ?, ?)",
                (sha256, bytes(image), version),
            )
            db.executemany(
                "INSERT OR REPLACE INTO update_targets (key_id, sha256, state, chunk) VALUES (?, ?, 'offered', ?)",
                [(kid, sha256, chunk) for kid in key_ids],
            )
            db.executemany("INSERT INTO changes (key_id) VALUES (?)", [(k,) for k in key_ids])

    # ---- the hub's hot path ---------------------------------------------------------------------------
    def device(self, key_id: int) -> Device | None:
        rows = self._read("SELECT * FROM devices WHERE key_id=?", (key_id,))
        return _device(rows[0], self._open_key) if rows else None

    def pending_commands(self, key_id: int) -> list[Command]:
        rows = self._read("SELECT * FROM commands WHERE key_id=? AND state!='done' ORDER BY id", (key_id,))
        return [_command(r) for r in rows]

    def commit_batch(self, batch: Batch) -> None:
        if not batch:
            return
        with self._tx() as db:
            if batch.devices:
                db.executemany(
                    "UPDATE devices SET failures=?, up_highest=?, up_bits=?, down_seq=?, unlocked_seen=?, epoch=?,"
                    " suspended=? WHERE key_id=?",
                    [
                        (d.failures, d.up_highest, str(d.up_bits), d.down_seq, d.unlocked_seen, d.epoch, d.suspended, k)
                        for k, d in batch.devices.items()
                    ],
                )
            if batch.accepted:
                db.executemany(
                    "INSERT OR REPLACE INTO accepted (key_id, seq, digest, at, epoch) VALUES (?,?,?,?,?)",
                    [(a.key_id, a.seq, a.digest, a.at, a.epoch) for a in batch.accepted],
                )
            if batch.prune:
                db.executemany("DELETE FROM accepted WHERE key_id=? AND seq<?", list(batch.prune.items()))
            if batch.messages:
                db.executemany(
                    "INSERT OR IGNORE INTO messages (at, device_id, key_id, seq, kind, mode, unlocked, payload)"
                    " VALUES (?,?,?,?,?,?,?,?)",
                    [
                        (m.at, m.device_id, m.key_id, m.seq, m.kind, m.mode, int(m.unlocked), m.payload)
                        for m in batch.messages
                    ],
                )
            if batch.commands:
                db.executemany(
                    "UPDATE commands SET state=?, down_seq=?, datagram=?, sent=? WHERE id=?",
                    [(c.state, c.down_seq, c.datagram, c.sent, c.id) for c in batch.commands.values()],
                )
            if batch.updates:  # only the target read: one published since is left as it is
                db.executemany(
                    "UPDATE update_targets SET state=?, reason=?, offered_at=?, last_req=?, served_bytes=?"
                    " WHERE key_id=? AND sha256=?",
                    [
                        (u.state, u.reason, u.offered_at, u.last_req, u.served_bytes, k, u.sha256)
                        for k, u in batch.updates.items()
                    ],
                )

    def publish_image(self, digest: bytes, image: bytes, version: str, key_ids: list[int]) -> None:
        """Store an OTA image once (by SHA-256) and make it the one these key ids download."""
        self._write_many(
            ["INSERT OR IGNORE INTO update_images (sha256, image, version) VALUES (?, ?, ?)",
             "INSERT OR REPLACE INTO update_targets (key_id, sha256) VALUES (?, ?)"],
            [[(digest, image, version)], [(k, digest) for k in key_ids]],
        )

    def _write_many(self, statements: list[str], rows: list[list[tuple]]) -> None:
        with self._tx() as db:
            for sql, args in zip(statements, rows, strict=True):
                db.executemany(sql, args)

    def _swap_key(self, key_id: int, new: bytes, old: bytes) -> int:
        with self._tx() as db:
            return db.execute("UPDATE devices SET root_key=? WHERE key_id=? AND root_key=?", (new, key_id, old)).rowcount

    def close(self) -> None:
        with self._lock:
            self.db.close()


def is_postgres(db: str | Path) -> bool:
    """Whether `--db` (or `--hub-db`) names a PostgreSQL database (a URL) rather than a SQLite file."""
    return str(db).startswith(("postgresql://", "postgres://"))


def database_errors(db: str | Path) -> tuple[type[Exception], ...]:
    """What the store `db` names raises when its database fails (a lost connection, a locked or
    unreadable file, a broken constraint): sqlite3's errors, and psycopg's for a PostgreSQL URL."""
    if is_postgres(db):
        import psycopg  # as in open_store: only a PostgreSQL store imports it

        return (sqlite3.Error, psycopg.Error)
    return (sqlite3.Error,)


def open_store(db: str | Path, keyring: Keyring | None = None) -> Store:
    """The store `--db` names: a postgresql:// URL (cghub.pgstore, psycopg) or a SQLite file."""
    if is_postgres(db):
        from cghub.pgstore import PostgresStore  # psycopg is imported only by hubs that use it

        return PostgresStore(str(db), keyring=keyring)
    return SqliteStore(db, keyring=keyring)
