"""cellguard hub: receives the devices' datagrams over UDP, verifies, acknowledges, delivers commands.

    cellguard hub serve --db hub.sqlite --port 5683 --out messages.jsonl
    cellguard hub register-device --db hub.sqlite --key-id 1001 --device-id dev-1 --root-key-hex ...
    cellguard hub queue --db hub.sqlite --key-id 1001 reboot
    cellguard hub publish --db hub.sqlite --image app.img --key-id 1001   # or --all: OTA update
    cellguard hub stats --db hub.sqlite

Every accepted message is written as one JSON line; every rejection is logged with its reason and
counted. Per-key state (replay window, downlink sequence, failed verifications, pending commands)
lives in SQLite and is committed before the hub answers, so a restart never reopens a window.
The wire format is docs/protocol.md; hubproto.py implements it from that document.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from cghub import proto as hp  # noqa: E402
from cghub import updates as hub_updates  # noqa: E402

log = logging.getLogger("cellguard.hub")

UP_WINDOW = 64  # protocol.md section 7
DOWN_WINDOW = 32  # the device's downlink window: command datagrams older than this are re-sealed
FAILURE_LIMIT = 1 << 20
ACCEPTED_KEEP = 1024  # accepted (key, seq, digest) rows kept below the highest, for duplicates/nonce reuse
ACK_RECENT_S = 900  # accepted this recently: still worth re-acknowledging in the ACK bitmap  # protocol.md section 9: failed verifications before a key is suspended

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
"""

# cghub.updates.Updates, or a (key_id, offset, length) -> image bytes callable (older CHUNK REQ)
UpdateProvider = object


class HubStore:
    """The hub's SQLite state. One connection, used from one thread at a time."""

    def __init__(self, path: str | Path):
        self.db = sqlite3.connect(str(path), check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.executescript(SCHEMA)
        self.db.commit()

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
        """Provisioning registers each device's root key under a new key id (never reused)."""
        if len(root_key) != 32:
            raise ValueError("root key must be 32 bytes")
        if ccm_tag not in (8, 12, 16) or not 10 <= hmac_tag <= 32:
            raise ValueError("tag length not allowed")
        if modes not in ("any", "encrypt", "sign"):
            raise ValueError("modes must be any, encrypt or sign")
        with self.db:
            if self.db.execute("SELECT 1 FROM devices WHERE key_id=?", (key_id,)).fetchone():
                raise ValueError(f"key id {key_id} already used (key ids are never reused)")
            if replace:  # key rotation: the device's previous keys are retired
                self.db.execute("UPDATE devices SET retired=1 WHERE device_id=?", (device_id,))
            elif self.db.execute("SELECT 1 FROM devices WHERE device_id=? AND retired=0", (device_id,)).fetchone():
                raise ValueError(f"device {device_id} already has a live key (use --replace to rotate)")
            self.db.execute(
                "INSERT INTO devices (key_id, device_id, root_key, modes, ccm_tag, hmac_tag) VALUES (?,?,?,?,?,?)",
                (key_id, device_id, root_key, modes, ccm_tag, hmac_tag),
            )

    def device(self, key_id: int) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM devices WHERE key_id=?", (key_id,)).fetchone()

    def queue_command(self, key_id: int, record: bytes) -> int:
        if self.device(key_id) is None:
            raise ValueError(f"unknown key id {key_id}")
        with self.db:
            cur = self.db.execute("INSERT INTO commands (key_id, record) VALUES (?, ?)", (key_id, record))
        return int(cur.lastrowid)

    def commands(self, key_id: int) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM commands WHERE key_id=? ORDER BY id", (key_id,)).fetchall()

    def accepted_seqs(self, key_id: int) -> list[int]:
        return [r[0] for r in self.db.execute("SELECT seq FROM accepted WHERE key_id=? ORDER BY seq", (key_id,))]


class Hub:
    """The protocol logic, without sockets: handle(datagram) -> datagrams to send back."""

    def __init__(self, store: HubStore, out: TextIO | None = None, clock: Callable[[], float] = time.time):
        self.store = store
        self.out = out
        self.clock = clock
        self.counters: Counter[str] = Counter()
        self.update_provider: UpdateProvider | None = None
        self._keys: dict[tuple[int, str], hp.DirectionKeys] = {}
        self.lock = threading.Lock()

    # ---- helpers --------------------------------------------------------------------------------
    def _dir_keys(self, dev: sqlite3.Row, direction: str) -> hp.DirectionKeys:
        k = (dev["key_id"], direction)
        if k not in self._keys:
            self._keys[k] = hp.DirectionKeys.make(dev["root_key"], direction, dev["ccm_tag"], dev["hmac_tag"])
        return self._keys[k]

    def _reject(self, reason: str, addr, detail: str = "") -> list[bytes]:
        self.counters["rejected"] += 1
        self.counters["rejected." + reason] += 1
        log.warning("rejected from %s: %s%s", addr, reason, (" (" + detail + ")") if detail else "")
        return []

    def _next_down_seq(self, key_id: int) -> int:
        row = self.store.db.execute(
            "UPDATE devices SET down_seq = down_seq + 1 WHERE key_id=? RETURNING down_seq - 1", (key_id,)
        ).fetchone()
        return int(row[0])

    def _seal_down(self, dev: sqlite3.Row, encrypt: bool, payload: bytes) -> tuple[int, bytes]:
        with self.store.db:  # the downlink sequence is committed before the datagram exists
            seq = self._next_down_seq(dev["key_id"])
        if seq > hp.MAX_SEQ:  # protocol.md section 9: never wrap, never reuse; the key must rotate
            log.error("key id %d: downlink sequence exhausted, rotate the key", dev["key_id"])
            raise hp.ProtocolError("downlink sequence exhausted")
        flags = hp.FLAG_ENCRYPT if encrypt else 0
        return seq, hp.seal(self._dir_keys(dev, "down"), flags, None, seq, payload)

    # ---- the datagram path ----------------------------------------------------------------------
    def handle(self, data: bytes, addr=None) -> list[bytes]:
        with self.lock:
            try:
                return self._handle(bytes(data), addr)
            except hp.ProtocolError as e:
                return self._reject(str(e), addr)
            except Exception:  # a bug must not take the hub down: count it, keep serving
                log.exception("internal error on a datagram from %s", addr)
                self.counters["internal_error"] += 1
                return []

    def _handle(self, data: bytes, addr) -> list[bytes]:
        self.counters["received"] += 1
        header = hp.parse_header(data)
        if header.key_id is None:
            return self._reject("unknown key", addr, "no key id")
        dev = self.store.device(header.key_id)
        if dev is None or dev["retired"]:
            return self._reject("unknown key", addr, f"key id {header.key_id}")
        if dev["suspended"]:
            return self._reject("key suspended", addr, f"key id {header.key_id}")
        if (dev["modes"] == "encrypt" and not header.encrypt) or (dev["modes"] == "sign" and header.encrypt):
            return self._reject("mode not allowed", addr)
        try:
            plain = hp.open_(self._dir_keys(dev, "up"), header, data)
        except hp.ProtocolError as e:
            if str(e) == "bad tag":
                self._count_failure(dev)
            raise
        digest = hashlib.sha256(data).digest()
        kid, seq = header.key_id, header.seq
        highest, bits = dev["up_highest"], int(dev["up_bits"])
        prior = self.store.db.execute("SELECT digest FROM accepted WHERE key_id=? AND seq=?", (kid, seq)).fetchone()
        if prior is not None:
            if prior[0] != digest:
                # Two different authentic datagrams under one sequence number: a reused nonce.
                self.counters["nonce_reuse"] += 1
                log.error("NONCE REUSE: key id %d seq %d carried two different datagrams", kid, seq)
            self.counters["duplicate"] += 1
            log.info("duplicate key id %d seq %d: acknowledged again", kid, seq)
            return self._answer(dev, header, plain, new=False)
        if seq <= highest - UP_WINDOW or (seq < highest and (bits >> (highest - seq - 1)) & 1) or seq == highest:
            return self._reject("replayed", addr, f"key id {kid} seq {seq} outside the window")
        if seq > highest:
            shift = seq - highest
            bits = (((bits << 1) | 1) << (shift - 1)) if highest >= 0 and shift <= UP_WINDOW else 0
            highest = seq
        else:
            bits |= 1 << (highest - seq - 1)
        bits &= (1 << UP_WINDOW) - 1
        unlocked = bool(header.flags & hp.FLAG_UNLOCKED)
        with self.store.db:  # window and record committed before anything is written out or answered
            self.store.db.execute(
                "UPDATE devices SET up_highest=?, up_bits=?, unlocked_seen=unlocked_seen OR ? WHERE key_id=?",
                (highest, str(bits), unlocked, kid),
            )
            self.store.db.execute(
                "INSERT INTO accepted (key_id, seq, digest, at) VALUES (?,?,?,?)", (kid, seq, digest, self.clock())
            )
            # Bounded per key: far below the window an authentic datagram is rejected anyway.
            self.store.db.execute(
                "DELETE FROM accepted WHERE key_id=? AND seq<?", (kid, highest - ACCEPTED_KEEP)
            )
        self.counters["accepted"] += 1
        self._write_out(dev, header, plain, unlocked)
        return self._answer(dev, header, plain, new=True)

    def _count_failure(self, dev: sqlite3.Row) -> None:
        with self.store.db:
            self.store.db.execute("UPDATE devices SET failures = failures + 1 WHERE key_id=?", (dev["key_id"],))
            if dev["failures"] + 1 >= FAILURE_LIMIT:
                self.store.db.execute("UPDATE devices SET suspended=1 WHERE key_id=?", (dev["key_id"],))
                log.error("key id %d suspended: failed-verification limit reached", dev["key_id"])

    def _write_out(self, dev: sqlite3.Row, header: hp.Header, plain: bytes, unlocked: bool) -> None:
        kind = "reading"
        body = plain
        if header.flags & hp.FLAG_CONTROL:
            kind = hp.CONTROL_NAMES.get(plain[0], "control") if plain else "control"
            body = plain[1:]
        line = {
            "at": round(self.clock(), 3),
            "device": dev["device_id"],
            "key_id": dev["key_id"],
            "seq": header.seq,
            "type": kind,
            "mode": "encrypt" if header.encrypt else "sign",
            "unlocked": unlocked,
            "payload_hex": body.hex(),
        }
        if self.out is not None:
            self.out.write(json.dumps(line, sort_keys=True) + "\n")
            self.out.flush()

    # ---- answers --------------------------------------------------------------------------------
    def _answer(self, dev: sqlite3.Row, header: hp.Header, plain: bytes, new: bool) -> list[bytes]:
        kid, seq = dev["key_id"], header.seq
        ctrl = plain[0] if (header.flags & hp.FLAG_CONTROL) and plain else None
        replies: list[bytes] = []
        if ctrl == hp.CTRL_DACK:
            self._confirm_commands(kid, int.from_bytes(plain[1:5], "big"))
            return replies
        if ctrl == hp.CTRL_CHUNK_REQ:  # chunks of the image it names, one datagram each (cghub.updates)
            for p in hub_updates.serve_request(self.update_provider, kid, plain, new):
                replies.append(self._seal_down(dev, header.encrypt, p)[1])
            return replies
        # Acknowledge the highest accepted sequence and, in the bitmap, the 24 below it: one ack covers
        # every recent datagram, so a lost ack is healed by the next. An answer to an older datagram
        # names that datagram instead.
        # Only recently accepted ones go in the bitmap (a device that waits for them retransmits
        # within its backoff ceiling): a device reporting hourly, in order, gets the 2-byte ACK.
        highest = self.store.device(kid)["up_highest"]
        top = highest if seq >= highest - hp.ACK_BITMAP_SEQS else seq
        low = max(0, top - hp.ACK_BITMAP_SEQS)
        also = {
            r[0]
            for r in self.store.db.execute(
                "SELECT seq FROM accepted WHERE key_id=? AND seq>=? AND seq<? AND at>=?",
                (kid, low, top, self.clock() - ACK_RECENT_S),
            )
        }
        if seq != top:
            also.add(seq)
        payload = hp.ack_record(top, also)
        time_queued = self._take_time_requests(kid)
        if ctrl == hp.CTRL_HELLO or time_queued:
            payload += hp.time_record(int(self.clock()))
        payload += hub_updates.ack_records(self.update_provider, kid, ctrl, plain, new)  # (re-)offer
        replies.append(self._seal_down(dev, header.encrypt, payload)[1])
        replies.extend(self._command_datagrams(dev, header.encrypt))
        self.counters["acks_sent"] += 1
        return replies

    def _take_time_requests(self, key_id: int) -> bool:
        """A queued TIME is not a command the device confirms (protocol.md section 4): it goes out
        once, with the hub's clock at that moment, in the next ack datagram, and is then done."""
        with self.store.db:
            cur = self.store.db.execute(
                "UPDATE commands SET state='done', sent=sent+1 WHERE key_id=? AND state!='done' AND hex(substr(record,1,1))=?",
                (key_id, f"{hp.REC_TIME:02X}"),
            )
        return cur.rowcount > 0

    def _command_datagrams(self, dev: sqlite3.Row, encrypt: bool) -> list[bytes]:
        """Pending commands, sealed once and resent byte for byte until the device DACKs them."""
        kid = dev["key_id"]
        rows = self.store.db.execute(
            "SELECT * FROM commands WHERE key_id=? AND state!='done' ORDER BY id", (kid,)
        ).fetchall()
        rows = [r for r in rows if r["record"][:1] != bytes([hp.REC_TIME])]  # those ride on acks
        if not rows:
            return []
        down_now = self.store.device(kid)["down_seq"]
        sent = [r for r in rows if r["datagram"] is not None and down_now - r["down_seq"] < DOWN_WINDOW - 8]
        fresh = [r for r in rows if r not in sent]
        out = []
        if sent:
            out.append(sent[0]["datagram"])
        if fresh:
            payload = b"".join(r["record"] for r in fresh)
            seq, datagram = self._seal_down(dev, encrypt, payload)
            with self.store.db:
                for r in fresh:
                    self.store.db.execute(
                        "UPDATE commands SET state='sent', down_seq=?, datagram=? WHERE id=?", (seq, datagram, r["id"])
                    )
            out.append(datagram)
        with self.store.db:
            self.store.db.execute("UPDATE commands SET sent = sent + 1 WHERE key_id=? AND state='sent'", (kid,))
        self.counters["command_datagrams_sent"] += len(out)
        return out

    def _confirm_commands(self, key_id: int, down_seq: int) -> None:
        with self.store.db:
            cur = self.store.db.execute(
                "UPDATE commands SET state='done' WHERE key_id=? AND down_seq=? AND state='sent'", (key_id, down_seq)
            )
        self.counters["commands_confirmed"] += cur.rowcount
        log.info("key id %d confirmed downlink %d (%d commands)", key_id, down_seq, cur.rowcount)

    def stats(self) -> dict:
        return dict(self.counters)


# ---- UDP server -----------------------------------------------------------------------------------
class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, hub: Hub):
        self.hub = hub
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport):  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        for reply in self.hub.handle(data, addr):
            assert self.transport is not None
            self.transport.sendto(reply, addr)


class HubServer:
    """The hub on a UDP port, its asyncio loop in a background thread (for tests and tools)."""

    def __init__(self, hub: Hub, host: str = "127.0.0.1", port: int = 0):
        self.hub = hub
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="hub")
        self._transport: asyncio.DatagramTransport | None = None

    def start(self) -> HubServer:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._open(), self._loop)
        fut.result(timeout=10)
        return self

    async def _open(self) -> None:
        transport, _ = await self._loop.create_datagram_endpoint(
            lambda: _Protocol(self.hub), local_addr=(self.host, self.port)
        )
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    def stop(self) -> None:
        if self._transport is not None:
            self._loop.call_soon_threadsafe(self._transport.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


async def serve(hub: Hub, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(hub), local_addr=(host, port))
    log.info("hub listening on %s:%d", host, transport.get_extra_info("sockname")[1])
    try:
        await asyncio.Event().wait()
    finally:
        transport.close()


# ---- command line ---------------------------------------------------------------------------------
def _command_record(args: argparse.Namespace) -> bytes:
    if args.command == "reboot":
        return hp.reboot_record()
    if args.command == "decommission":
        return hp.decommission_record()
    if args.command == "config":
        return hp.config_record(args.key, args.value)
    if args.command == "time":
        return hp.time_record(int(time.time()))
    image = Path(args.image).read_bytes()
    return hp.update_offer_record(
        args.major, args.minor, args.revision, len(image), hashlib.sha256(image).digest(), args.chunk
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cellguard hub: per-message secured UDP endpoint")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("serve", help="receive datagrams on UDP")
    p.add_argument("--db", required=True)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=5683)
    p.add_argument("--out", help="JSON lines file for accepted messages (default stdout)")

    p = sub.add_parser("register-device", help="register a device's root key under a new key id")
    p.add_argument("--db", required=True)
    p.add_argument("--key-id", type=int, required=True)
    p.add_argument("--device-id", required=True)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--root-key-hex")
    g.add_argument("--root-key-file", help="file holding the 32 raw bytes")
    p.add_argument("--modes", choices=["any", "encrypt", "sign"], default="any")
    p.add_argument("--ccm-tag", type=int, default=8)
    p.add_argument("--hmac-tag", type=int, default=16)
    p.add_argument("--replace", action="store_true", help="rotate: retire the device's previous key ids")

    p = sub.add_parser("queue", help="queue a downlink command for a device")
    p.add_argument("--db", required=True)
    p.add_argument("--key-id", type=int, required=True)
    csub = p.add_subparsers(dest="command", required=True)
    csub.add_parser("reboot")
    csub.add_parser("decommission")
    csub.add_parser("time")
    c = csub.add_parser("config")
    c.add_argument("key", type=int, help="1 interval s, 2 daily byte budget, 3 mode, 4 retry ceiling s")
    c.add_argument("value", type=int)
    c = csub.add_parser("update-offer")
    c.add_argument("--image", required=True)
    c.add_argument("--major", type=int, required=True)
    c.add_argument("--minor", type=int, default=0)
    c.add_argument("--revision", type=int, default=0)
    c.add_argument("--chunk", type=int, default=hub_updates.DEFAULT_CHUNK)

    p = sub.add_parser("publish", help="offer a signed image (MCUboot format) to one device or to all")
    p.add_argument("--db", required=True)
    p.add_argument("--image", required=True, type=Path)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--key-id", type=int, action="append", help="a device's key id (repeatable)")
    g.add_argument("--all", action="store_true", help="every live device")
    p.add_argument("--chunk", type=int, default=hub_updates.DEFAULT_CHUNK)

    p = sub.add_parser("stats", help="per-device state")
    p.add_argument("--db", required=True)
    p.add_argument("--json", action="store_true")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    store = HubStore(args.db)
    if args.cmd == "serve":
        out = open(args.out, "a") if args.out else sys.stdout  # noqa: SIM115
        hub = Hub(store, out)
        hub.update_provider = hub_updates.provider(store)  # chunks of published images (publish)
        try:
            asyncio.run(serve(hub, args.host, args.port))
        except KeyboardInterrupt:
            pass
        return 0
    if args.cmd == "register-device":
        root = bytes.fromhex(args.root_key_hex) if args.root_key_hex else Path(args.root_key_file).read_bytes()
        store.register_device(args.key_id, args.device_id, root, args.modes, args.ccm_tag, args.hmac_tag, args.replace)
        print(f"registered key id {args.key_id} for {args.device_id}")
        return 0
    if args.cmd == "publish":
        try:
            offered = hub_updates.publish_file(store, args.image, None if args.all else args.key_id, args.chunk)
        except hub_updates.PublishError as e:
            log.error("%s", e)
            return 1
        print(f"offered {args.image.name} to {len(offered)} device(s): {', '.join(map(str, offered))}")
        return 0
    if args.cmd == "queue":
        cid = store.queue_command(args.key_id, _command_record(args))
        print(f"queued command {cid} for key id {args.key_id}")
        return 0
    rows = [
        {k: r[k] for k in r.keys() if k != "root_key"} for r in store.db.execute("SELECT * FROM devices ORDER BY key_id")
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(
                f"{r['key_id']:>10} {r['device_id']:<20} seq<= {r['up_highest']:<8} down {r['down_seq']:<6} "
                f"failures {r['failures']} {'SUSPENDED ' if r['suspended'] else ''}{'RETIRED ' if r['retired'] else ''}"
                f"{'UNLOCKED-UNIT' if r['unlocked_seen'] else ''}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
