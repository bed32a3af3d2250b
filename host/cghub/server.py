"""cellguard hub: receives the devices' datagrams over UDP, verifies, acknowledges, delivers commands.

    cellguard hub serve --db hub.sqlite --port 5683 --out messages.jsonl
    cellguard hub register-device --db hub.sqlite --key-id 1001 --device-id dev-1 --root-key-hex ...
    cellguard hub queue --db hub.sqlite --key-id 1001 reboot
    cellguard hub publish --db hub.sqlite --image app.img --key-id 1001   # or --all: OTA update
    cellguard hub stats --db hub.sqlite
    cellguard hub new-kek --kek-file /etc/cellguard/hub.kek             # a key-encryption key (0600)
    cellguard hub rotate-kek --db hub.sqlite --kek-file new.kek --old-kek-file old.kek  # hubs hold both first

Datagrams are handled in batches: verified in the hub's own thread, then everything the batch
changed (replay windows, accepted messages, downlink sequence numbers, command states) is committed
in one transaction, and only then do the batch's answers leave. Every accepted message is stored and
written as one JSON line; rejections are counted per reason and logged in aggregate. The state is
behind cghub.store.Store (SqliteStore here); the wire format is docs/protocol.md, which cghub.proto
implements from that document.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TextIO

from cghub import keyseal
from cghub import proto as hp
from cghub import updates as hub_updates
from cghub.ratelog import RejectLog
from cghub.store import Accepted, Batch, Command, Device, Message, Store, open_store
from cghub.workers import drop_option, hangup_means_reload

log = logging.getLogger("cellguard.hub")

UP_WINDOW = 64  # protocol.md section 7
DOWN_WINDOW = 32  # the device's downlink window: command datagrams older than this are re-sealed
FAILURE_LIMIT = 1 << 20  # protocol.md section 9: failed verifications before the key epoch moves
ACCEPTED_KEEP = 1024  # accepted (key, seq, digest) rows stored below the highest, for duplicates/nonce reuse
PRUNE_STEP = 64  # stored rows below ACCEPTED_KEEP are deleted in steps: one DELETE per key per step
MEM_ACCEPTED = UP_WINDOW + 32  # accepted rows a key keeps in memory (the window; older ones: the store)
ACK_RECENT_S = 900  # accepted this recently: still worth re-acknowledging in the ACK bitmap
FAILURE_FLUSH_S = 1.0  # failed verifications alone are written at most this often (no commit per forgery)
REJECT_LOG_S = 10.0  # rejections are logged as one line per reason and interval
MAX_BATCH = 256  # datagrams verified and committed together (one transaction)
PEER_FRESH_S = 600.0  # an address that sent a new authentic datagram this recently is the device's
DUPLICATE_ANSWER_S = 1.0  # duplicates of one key are answered at most once per this interval
CREDIT_ADDRESSES = 1 << 16  # addresses whose byte balance is remembered

# cghub.updates.Updates, or a (key_id, offset, length) -> image bytes callable (older CHUNK REQ)
UpdateProvider = object

def HubStore(db, keyring: keyseal.Keyring | None = None) -> Store:  # noqa: N802 (the old class name)
    """The store `--db` names (a SQLite file, or a postgresql:// URL) with the KEK the operator
    configured (keyseal.keyring_from: the environment, or hub.kek beside a SQLite database) unless one
    is handed in: what the tools and the demo use."""
    return open_store(db, keyring if keyring is not None else keyseal.keyring_from(db))


def _header(data: bytes) -> hp.Header | None:
    """The datagram's header, or None: too long to parse, or malformed (_handle says why)."""
    if len(data) > hp.MAX_UPLINK:
        return None
    try:
        return hp.parse_header(bytes(data))
    except hp.ProtocolError:
        return None


def _state(d: Device) -> tuple:
    """What another hub process may change in a key's row (the root key and identity never change)."""
    return (d.up_highest, d.up_bits, d.down_seq, d.failures, d.epoch, d.suspended, d.retired, d.unlocked_seen)


class Hub:
    """The protocol logic, without sockets: handle_batch([(datagram, addr)]) -> [(reply, addr)].

    State lives in the store; the hub caches each key's row, its recent accepted sequences and its
    pending commands, changes them in memory while it handles a batch, and hands the store everything
    the batch changed in one commit before it returns a single answer.
    """

    def __init__(self, store: Store, out: TextIO | None = None, clock: Callable[[], float] = time.time):
        self.store = store
        self.out = out
        self.clock = clock
        self.counters: Counter[str] = Counter()
        self.update_provider: UpdateProvider | None = None
        self.metrics = None  # cghub.metrics.HubMetrics: batch sizes and commit latency, once per batch
        self.after_commit: Callable[[], None] | None = None  # e.g. wake the MQTT publisher (cghub.mqttout)
        self.lock = threading.Lock()
        self.rejects = RejectLog(log, REJECT_LOG_S)
        self._devs: dict[int, Device] = {}
        self._acc: dict[int, dict[int, Accepted]] = {}
        self._pruned: dict[int, int] = {}  # key id -> stored accepted rows below this are deleted
        self._cmds: dict[int, list[Command]] = {}
        self._keys: dict[tuple[int, str, int], hp.DirectionKeys] = {}
        self._mark = store.changes_since(-1)[0]
        self._batch = Batch()
        self._fail_dirty: set[int] = set()
        self.monotonic: Callable[[], float] = time.monotonic
        self._credit: dict[object, int] = {}  # address -> bytes received minus bytes sent, LRU order
        self._peer: dict[int, tuple[object, float]] = {}  # key id -> address of its last new datagram, when
        self._dup_answered: dict[int, float] = {}  # key id -> when a duplicate was last answered
        self._fail_flushed = -FAILURE_FLUSH_S

    # ---- the cache ------------------------------------------------------------------------------------
    def forget(self, key_id: int | None = None) -> None:
        """Drop cached state (one key id, or all): the next datagram reloads it from the store."""
        forget_updates = getattr(self.update_provider, "forget", None)  # cghub.updates.Updates caches too
        if forget_updates is not None:
            forget_updates(key_id)
        if key_id is None:
            self._devs.clear()
            self._acc.clear()
            self._cmds.clear()
            self._keys.clear()
            self._fail_dirty.clear()
            return
        self._devs.pop(key_id, None)
        self._acc.pop(key_id, None)
        self._cmds.pop(key_id, None)
        self._fail_dirty.discard(key_id)
        for k in [k for k in self._keys if k[0] == key_id]:
            del self._keys[k]

    def _sync(self) -> None:
        # Operators changed rows or queued commands (this process or another): drop those keys. Their
        # failure counts not yet written are written first, so a queue never resets a count.
        mark, changed = self.store.changes_since(self._mark)
        if changed is None or changed:
            dirty = self._fail_dirty if changed is None else self._fail_dirty & changed
            if dirty:
                self.store.commit_batch(Batch(devices={k: self._devs[k] for k in dirty if k in self._devs}))
            if changed is None:
                self.forget()
            else:
                for kid in changed:
                    self.forget(kid)
        self._mark = mark

    def _lock_keys(self, headers: list[hp.Header | None]) -> None:
        # A store shared with other hub processes (PostgreSQL, --workers) locks the batch's rows and
        # returns them as committed: a key another worker moved since we cached it (its window, its
        # downlink sequence, its epoch) is reloaded inside the locked transaction. One worker at a time
        # applies a key's datagrams, and always to the latest state: exactly once. The change log
        # comes back in the same round trip; when operators changed something (rare), the batch's
        # transaction is given up and opened again after _sync, which may commit failure counts.
        if not self.store.shared:
            self._sync()
            return
        key_ids = [h.key_id for h in headers if h is not None and h.key_id is not None]
        locked = self.store.begin_batch(key_ids, since=self._mark)
        if locked.changed:
            self.store.abort_batch()
            self._sync()
            locked = self.store.begin_batch(key_ids)
        elif locked.mark is not None:
            self._mark = locked.mark
        for kid, dev in locked.devices.items():
            cached = self._devs.get(kid)
            if cached is None:
                continue  # loaded, key and all, when first needed: inside this transaction, locked
            if _state(cached) != _state(dev):
                self.forget(kid)
                dev.root_key = cached.root_key  # a key id's root key never changes: no unwrap needed
                self._devs[kid] = dev

    def _device(self, key_id: int) -> Device | None:
        dev = self._devs.get(key_id)
        if dev is None:
            dev = self.store.device(key_id)
            if dev is None:
                return None  # not cached: a stream of unknown ids must not grow memory
            self._devs[key_id] = dev
        return dev

    def _accepted(self, dev: Device) -> dict[int, Accepted]:
        acc = self._acc.get(dev.key_id)
        if acc is None:
            rows = self.store.recent_accepted(dev.key_id, dev.up_highest - MEM_ACCEPTED)
            acc = self._acc[dev.key_id] = {a.seq: a for a in sorted(rows, key=lambda a: a.seq)}
        return acc

    def _pending(self, key_id: int) -> list[Command]:
        cmds = self._cmds.get(key_id)
        if cmds is None:
            cmds = self._cmds[key_id] = self.store.pending_commands(key_id)
        return cmds

    def _dir_keys(self, dev: Device, direction: str, epoch: int | None = None) -> hp.DirectionKeys:
        e = dev.epoch if epoch is None else epoch
        k = (dev.key_id, direction, e)
        keys = self._keys.get(k)
        if keys is None:
            keys = self._keys[k] = hp.DirectionKeys.make(dev.root_key, direction, dev.ccm_tag, dev.hmac_tag, e)
        return keys

    # ---- helpers --------------------------------------------------------------------------------
    def _reject(self, reason: str, addr, detail: str = "") -> list[bytes]:
        self.counters["rejected"] += 1
        self.counters["rejected." + reason] += 1
        self.rejects.add(reason, addr, detail)
        return []

    def _seal_down(self, dev: Device, encrypt: bool, payload: bytes) -> tuple[int, bytes]:
        # The number is taken in memory and written with the batch, which is committed before any
        # datagram of the batch leaves: a hub killed before the commit sent nothing under it.
        seq = dev.down_seq
        if seq > hp.MAX_SEQ:  # protocol.md section 9: never wrap, never reuse; the key must rotate
            log.error("key id %d: downlink sequence exhausted, rotate the key", dev.key_id)
            raise hp.ProtocolError("downlink sequence exhausted")
        dev.down_seq = seq + 1
        self._batch.devices[dev.key_id] = dev
        flags = hp.FLAG_ENCRYPT if encrypt else 0
        return seq, hp.seal(self._dir_keys(dev, "down"), flags, None, seq, payload)

    # ---- the datagram path ----------------------------------------------------------------------
    def handle(self, data: bytes, addr=None) -> list[bytes]:
        """One datagram as a batch of one: the replies for it."""
        return [reply for reply, _ in self.handle_batch([(data, addr)])]

    def handle_batch(self, items: list[tuple[bytes, object]]) -> list[tuple[bytes, object]]:
        """Verify and apply a batch of datagrams, commit what they changed in one transaction, and
        only then return the answers (durability before answer). A failed commit answers nothing."""
        with self.lock:
            headers = [_header(data) for data, _ in items]  # parsed once, for the locks and the checks
            self._lock_keys(headers)  # and first what operators changed since the last batch
            try:
                return self._apply_batch(items, headers)
            except BaseException:
                self.store.abort_batch()  # never leave a shared store's rows locked
                raise

    def _apply_batch(self, items: list[tuple[bytes, object]], headers: list[hp.Header | None]) -> list[tuple[bytes, object]]:
        batch = self._batch = Batch()
        answers: list[tuple[bytes, object]] = []
        credit = self._credit
        for (data, addr), header in zip(items, headers, strict=True):
            # Bytes received from an address buy at most as many bytes of answer to it, unless a
            # new authentic datagram came from it (protocol.md section 4, "Amplification").
            credit[addr] = credit.pop(addr, 0) + len(data)
            if len(credit) > CREDIT_ADDRESSES:
                del credit[next(iter(credit))]  # the least recently heard address starts afresh
            try:
                replies = self._handle(bytes(data), addr, header)
            except hp.ProtocolError as e:
                replies = self._reject(str(e), addr)
            except Exception:  # a bug must not take the hub down: count it, keep serving
                log.exception("internal error on a datagram from %s", addr)
                self.counters["internal_error"] += 1
                replies = []
            if replies:
                credit[addr] = credit.get(addr, 0) - sum(len(r) for r in replies)
                answers.extend((r, addr) for r in replies)
        self.rejects.flush()
        self._fail_dirty -= batch.devices.keys()  # written with the batch anyway
        now = time.monotonic()
        if self._fail_dirty and (batch or now - self._fail_flushed >= FAILURE_FLUSH_S):
            for kid in self._fail_dirty:
                if kid in self._devs:
                    batch.devices[kid] = self._devs[kid]
            self._fail_dirty.clear()
            self._fail_flushed = now
        t0 = time.perf_counter()
        try:
            self.store.commit_batch(batch)  # also ends a shared store's batch transaction (locks)
        except Exception:
            # Nothing of the batch is durable, so nothing of it may be answered; the cache is
            # ahead of the store and is dropped.
            log.exception("commit of a batch of %d datagrams failed: none answered", len(items))
            self.counters["commit_failed"] += 1
            self.forget()
            return []
        if batch:
            self.counters["commits"] += 1
            if self.metrics is not None:
                self.metrics.observe_batch(len(items), time.perf_counter() - t0)
        self._trim(batch)
        self._write_out(batch.messages)
        if batch.messages and self.after_commit is not None:
            self.after_commit()
        return answers

    def _trim(self, batch: Batch) -> None:
        # Memory holds the window's accepted rows (and some): the store, committed now, has the rest.
        for a in batch.accepted:
            acc = self._acc.get(a.key_id)
            dev = self._devs.get(a.key_id)
            if acc is not None and dev is not None and len(acc) > MEM_ACCEPTED + 16:
                floor = dev.up_highest - MEM_ACCEPTED
                for s in [s for s in acc if s < floor]:
                    del acc[s]

    def _handle(self, data: bytes, addr, header: hp.Header | None) -> list[bytes]:
        self.counters["received"] += 1
        if len(data) > hp.MAX_UPLINK:  # bounded cost: longer than any device sends, not even parsed
            raise hp.ProtocolError("too long")
        if header is None:
            header = hp.parse_header(data)  # raises what is wrong with it
        if header.key_id is None:
            return self._reject("unknown key", addr, "no key id")
        try:
            dev = self._device(header.key_id)
        except keyseal.KeyNotAtHand as e:
            # Sealed under a KEK this hub was not started with (rotated before every hub held both,
            # docs/hub.md section 5): a rejection like the others, counted and logged in aggregate.
            # Nothing is cached (each datagram costs a row read, as an unknown key id does), so a
            # hub restarted with the KEK, or a rewrap back, serves it again.
            return self._reject("key not at hand", addr, str(e))
        except keyseal.KekError as e:  # a blob altered or moved to another row, or a clear key from before sealing
            return self._reject("key does not open", addr, str(e))
        if dev is None or dev.retired:
            return self._reject("unknown key", addr, f"key id {header.key_id}")
        if dev.suspended:
            return self._reject("key suspended", addr, f"key id {header.key_id}")
        if (dev.modes == "encrypt" and not header.encrypt) or (dev.modes == "sign" and header.encrypt):
            return self._reject("mode not allowed", addr)
        plain = self._open(dev, header, data)
        digest = hashlib.sha256(data).digest()
        kid, seq = dev.key_id, header.seq
        acc = self._accepted(dev)
        prior = acc.get(seq)
        if prior is None and seq <= dev.up_highest - UP_WINDOW:
            prior = self.store.accepted(kid, seq)  # older than the window: only the store knows
        if prior is not None:
            # A datagram sealed again in a new epoch (protocol.md section 9) has other bytes under
            # the same sequence, and another key: a duplicate, not a reused nonce.
            if prior.digest != digest and prior.epoch == dev.epoch:
                # Two different authentic datagrams under one sequence number: a reused nonce.
                self.counters["nonce_reuse"] += 1
                log.error("NONCE REUSE: key id %d seq %d carried two different datagrams", kid, seq)
            self.counters["duplicate"] += 1
            log.debug("duplicate key id %d seq %d: acknowledged again", kid, seq)
            return self._answer(dev, header, plain, False, addr)
        highest, bits = dev.up_highest, dev.up_bits
        if seq <= highest - UP_WINDOW or (seq < highest and (bits >> (highest - seq - 1)) & 1) or seq == highest:
            return self._reject("replayed", addr, f"key id {kid} seq {seq} outside the window")
        if seq > highest:
            shift = seq - highest
            bits = (((bits << 1) | 1) << (shift - 1)) if highest >= 0 and shift <= UP_WINDOW else 0
            highest = seq
        else:
            bits |= 1 << (highest - seq - 1)
        dev.up_highest, dev.up_bits = highest, bits & ((1 << UP_WINDOW) - 1)
        unlocked = bool(header.flags & hp.FLAG_UNLOCKED)
        dev.unlocked_seen = int(dev.unlocked_seen or unlocked)
        now = self.clock()
        a = Accepted(kid, seq, digest, now, dev.epoch)
        acc[seq] = a
        batch = self._batch
        batch.devices[kid] = dev
        batch.accepted.append(a)
        # Bounded per key: far below the window an authentic datagram is rejected anyway. Stored rows
        # are pruned every few sequences, memory after the commit (_trim).
        below = highest - ACCEPTED_KEEP
        if below >= self._pruned.get(kid, 0) + max(1, min(PRUNE_STEP, ACCEPTED_KEEP // 16)):
            batch.prune[kid] = self._pruned[kid] = below
        kind = "reading"
        body = plain
        if header.flags & hp.FLAG_CONTROL:
            kind = hp.CONTROL_NAMES.get(plain[0], "control") if plain else "control"
            body = plain[1:]
        mode = "encrypt" if header.encrypt else "sign"
        batch.messages.append(Message(now, dev.device_id, kid, seq, kind, mode, unlocked, body))
        self.counters["accepted"] += 1
        return self._answer(dev, header, plain, True, addr)

    def _open(self, dev: Device, header: hp.Header, data: bytes) -> bytes:
        """Verify under the key's epoch, else under the next one (protocol.md section 9): a device
        that moved says so with its next uplink, at no byte of cost. Success under the next epoch moves
        the hub there (committed with the batch, before any answer); failure under both is counted."""
        try:
            return hp.open_(self._dir_keys(dev, "up"), header, data)
        except hp.ProtocolError as e:
            if str(e) != "bad tag":
                raise
        try:
            plain = hp.open_(self._dir_keys(dev, "up", dev.epoch + 1), header, data)
        except hp.ProtocolError as e:
            if str(e) == "bad tag":
                self._count_failure(dev)
            raise
        dev.epoch += 1
        dev.failures = 0
        self._batch.devices[dev.key_id] = dev
        for k in [k for k in self._keys if k[0] == dev.key_id and k[2] < dev.epoch]:
            del self._keys[k]
        self.counters["epoch_moved"] += 1
        log.info("key id %d moved to key epoch %d", dev.key_id, dev.epoch)
        return plain

    def _count_failure(self, dev: Device) -> None:
        # Counted in memory; written with the next batch, or on its own at most every
        # FAILURE_FLUSH_S: a forger cannot buy a synced commit per datagram. At the limit the key is
        # not suspended: the hub asks the device to move to the next epoch (EPOCH, in _answer).
        dev.failures += 1
        self._fail_dirty.add(dev.key_id)
        if dev.failures == FAILURE_LIMIT:
            log.warning("key id %d: failed-verification limit reached, asking for a new key epoch", dev.key_id)

    def _write_out(self, messages: list[Message]) -> None:
        if self.out is None or not messages:
            return
        self.out.write("".join(m.json_line() for m in messages))
        self.out.flush()

    # ---- answers --------------------------------------------------------------------------------
    def _allowance(self, dev: Device, addr, new: bool) -> int | None:
        """How many bytes may answer this datagram: None (no limit) for a new authentic datagram or
        the device's own fresh address; else the address's byte credit, and only once per
        DUPLICATE_ANSWER_S per key (a replayed datagram buys no more than it brought)."""
        now = self.monotonic()
        kid = dev.key_id
        if new:
            self._peer[kid] = (addr, now)
            return None
        if now - self._dup_answered.get(kid, -DUPLICATE_ANSWER_S) < DUPLICATE_ANSWER_S:
            self.counters["duplicate_unanswered"] += 1
            return 0
        self._dup_answered[kid] = now
        peer = self._peer.get(kid)
        if peer is not None and peer[0] == addr and now - peer[1] <= PEER_FRESH_S:
            return None
        return max(0, self._credit.get(addr, 0))

    def _down_len(self, dev: Device, encrypt: bool, payload: bytes) -> int:
        return 1 + hp.uint_len(dev.down_seq) + len(payload) + (dev.ccm_tag if encrypt else dev.hmac_tag)

    def _answer(self, dev: Device, header: hp.Header, plain: bytes, new: bool, addr=None) -> list[bytes]:
        kid, seq = dev.key_id, header.seq
        ctrl = plain[0] if (header.flags & hp.FLAG_CONTROL) and plain else None
        replies: list[bytes] = []
        if ctrl == hp.CTRL_DACK:
            if new and 2 <= len(plain) <= 5:  # protocol.md section 5: the body is the sequence, 1-4 bytes
                self._confirm_commands(dev, int.from_bytes(plain[1:], "big"))
            elif new:
                self.counters["bad_control"] += 1
            return replies
        allowance = self._allowance(dev, addr, new)
        if allowance == 0:
            self.counters["answers_withheld"] += 1
            return replies
        if ctrl == hp.CTRL_CHUNK_REQ:  # chunks of the image it names, one datagram each (cghub.updates)
            for p in hub_updates.serve_request(self.update_provider, kid, plain, new, self._batch):
                if allowance is not None:  # a replayed request buys no more than it brought
                    need = self._down_len(dev, header.encrypt, p)
                    if need > allowance:
                        self.counters["answers_withheld"] += 1
                        break
                    allowance -= need
                replies.append(self._seal_down(dev, header.encrypt, p)[1])
            if not replies:  # nothing published for this key, past its end, or withheld: nothing sent
                self.counters["chunk_req_unanswered"] += 1
            return replies
        # Acknowledge the highest accepted sequence and, in the bitmap, the 24 below it: one ack covers
        # every recent datagram, so a lost ack is healed by the next. An answer to an older datagram
        # names that datagram instead.
        # Only recently accepted ones go in the bitmap (a device that waits for them retransmits
        # within its backoff ceiling): a device reporting hourly, in order, gets the 2-byte ACK.
        highest = dev.up_highest
        top = highest if seq >= highest - hp.ACK_BITMAP_SEQS else seq
        low = max(0, top - hp.ACK_BITMAP_SEQS)
        recent = self.clock() - ACK_RECENT_S
        acc = self._accepted(dev)
        also = {s for s in range(low, top) if s in acc and acc[s].at >= recent}
        if seq != top:
            also.add(seq)
        payload = hp.ack_record(top, also)
        if ctrl == hp.CTRL_HELLO or self._has_time_request(kid):
            payload += hp.time_record(int(self.clock()))
        payload += hub_updates.ack_records(self.update_provider, kid, ctrl, plain, new, self._batch)  # (re-)offer
        if dev.failures >= FAILURE_LIMIT:
            payload += hp.epoch_record()  # until the device's first uplink in the next epoch
        if allowance is not None:
            need = self._down_len(dev, header.encrypt, payload)
            if need > allowance:
                self.counters["answers_withheld"] += 1
                return replies
            allowance -= need
        self._take_time_requests(kid)
        replies.append(self._seal_down(dev, header.encrypt, payload)[1])
        replies.extend(self._command_datagrams(dev, header.encrypt, allowance))
        self.counters["acks_sent"] += 1
        return replies

    def _has_time_request(self, key_id: int) -> bool:
        pending = self._pending(key_id)
        return bool(pending) and any(c.record[:1] == bytes([hp.REC_TIME]) for c in pending)

    def _take_time_requests(self, key_id: int) -> bool:
        """A queued TIME is not a command the device confirms (protocol.md section 4): it goes out
        once, with the hub's clock at that moment, in the next ack datagram, and is then done."""
        pending = self._pending(key_id)
        if not pending:
            return False
        times = [c for c in pending if c.record[:1] == bytes([hp.REC_TIME])]
        for c in times:
            c.state = "done"
            c.sent += 1
            self._batch.commands[c.id] = c
            pending.remove(c)
        return bool(times)

    def _command_datagrams(self, dev: Device, encrypt: bool, allowance: int | None = None) -> list[bytes]:
        """Pending commands, sealed once and resent byte for byte until the device DACKs them; within
        `allowance` bytes if the address has not earned more (None: no limit)."""
        rows = [r for r in self._pending(dev.key_id) if r.record[:1] != bytes([hp.REC_TIME])]
        if not rows:
            return []
        down_now = dev.down_seq
        sent = [r for r in rows if r.datagram is not None and down_now - r.down_seq < DOWN_WINDOW - 8]
        fresh = [r for r in rows if r not in sent]
        out = []
        if sent and (allowance is None or len(sent[0].datagram) <= allowance):
            out.append(sent[0].datagram)
            if allowance is not None:
                allowance -= len(sent[0].datagram)
        payload = b"".join(r.record for r in fresh)
        if fresh and allowance is not None and self._down_len(dev, encrypt, payload) > allowance:
            fresh = []  # not sealed at all: a replay does not burn a downlink number for it
        if fresh:
            seq, datagram = self._seal_down(dev, encrypt, payload)
            for r in fresh:
                r.state, r.down_seq, r.datagram = "sent", seq, datagram
            out.append(datagram)
        for r in rows:
            if r.state == "sent":
                r.sent += 1
                self._batch.commands[r.id] = r
        self.counters["command_datagrams_sent"] += len(out)
        return out

    def _confirm_commands(self, dev: Device, down_seq: int) -> None:
        pending = self._pending(dev.key_id)
        done = [c for c in pending if c.down_seq == down_seq and c.state == "sent"]
        for c in done:
            c.state = "done"
            self._batch.commands[c.id] = c
            pending.remove(c)
        self.counters["commands_confirmed"] += len(done)
        log.debug("key id %d confirmed downlink %d (%d commands)", dev.key_id, down_seq, len(done))

    def stats(self) -> dict:
        return dict(self.counters)


# ---- UDP server -----------------------------------------------------------------------------------
class _Receiver:
    """Group commit, driven by the event loop: when the socket is readable the loop drains it (up to
    MAX_BATCH datagrams, no per-datagram callback) and hands the batch to the hub's own thread, which
    verifies it, commits it once and sends its answers. Datagrams that arrive meanwhile wait in the
    kernel's buffer and form the next batch: under light load a batch is one datagram and waits for
    nothing; under heavy load one commit covers up to MAX_BATCH. Neither crypto nor SQLite runs on
    the loop."""

    def __init__(self, hub: Hub, sock: socket.socket, loop: asyncio.AbstractEventLoop):
        self.hub = hub
        self.sock = sock
        self.loop = loop
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-batch")
        self.busy = False
        self.closed = False
        self.idle = asyncio.Event()  # no batch in hand: what SIGTERM waits for before the process exits
        self.idle.set()
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        if self.busy or self.closed:
            return
        batch = []
        recvfrom = self.sock.recvfrom
        try:
            while len(batch) < MAX_BATCH:
                batch.append(recvfrom(hp.MAX_UPLINK + 1))  # one byte more: a longer one is "too long"
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:  # e.g. an ICMP error queued on the socket: nothing to answer
            log.debug("recvfrom: %s", e)
        if not batch:
            return
        self.busy = True
        self.idle.clear()
        self.loop.remove_reader(self.sock.fileno())  # the kernel holds the next batch meanwhile
        fut = self.loop.run_in_executor(self.executor, self._run, batch)
        fut.add_done_callback(self._done)

    def _run(self, batch: list[tuple[bytes, object]]) -> None:
        sendto = self.sock.sendto
        for reply, addr in self.hub.handle_batch(batch):
            try:
                sendto(reply, addr)
            except OSError as e:  # a full send buffer or an unreachable address: UDP may lose it
                self.hub.counters["send_failed"] += 1
                log.debug("sendto %s: %s", addr, e)

    def _done(self, fut: asyncio.Future) -> None:
        self.busy = False
        if fut.exception() is not None:
            log.error("batch failed: %s", fut.exception())
        if not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._readable)
            self._readable()
        if not self.busy:
            self.idle.set()

    async def drain(self) -> None:
        """SIGTERM: read no more (the kernel keeps what arrives for another worker or the next start;
        the devices retransmit anyway), finish the batch in hand, its commit and its answers."""
        self.closed = True
        self.loop.remove_reader(self.sock.fileno())
        await self.idle.wait()

    def close(self) -> None:
        self.closed = True
        self.loop.remove_reader(self.sock.fileno())
        self.executor.shutdown(wait=True)
        self.sock.close()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]


RECV_BUFFER = 4 << 20  # a burst queues in the kernel while a batch commits (capped at net.core.rmem_max)


def _open_endpoint(
    hub: Hub, host: str, port: int, loop: asyncio.AbstractEventLoop, reuse_port: bool = False
) -> _Receiver:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
    if reuse_port:  # N worker processes on one port; the kernel hashes the source address to pick one
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return _Receiver(hub, sock, loop)


class HubServer:
    """The hub on a UDP port, its asyncio loop in a background thread (for tests and tools)."""

    def __init__(self, hub: Hub, host: str = "127.0.0.1", port: int = 0):
        self.hub = hub
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="hub")
        self._receiver: _Receiver | None = None

    def start(self) -> HubServer:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._open(), self._loop)
        fut.result(timeout=10)
        return self

    async def _open(self) -> None:
        self._receiver = _open_endpoint(self.hub, self.host, self.port, self._loop)
        self.port = self._receiver.port

    def stop(self) -> None:
        if self._receiver is not None:
            fut = asyncio.run_coroutine_threadsafe(self._close(), self._loop)
            fut.result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _close(self) -> None:
        receiver = self._receiver
        receiver.closed = True
        self._loop.remove_reader(receiver.sock.fileno())
        await self._loop.run_in_executor(None, receiver.close)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


async def serve(
    hub: Hub, host: str, port: int, reuse_port: bool = False, ready_fd: int | None = None
) -> tuple[bool, int]:
    """Serve until SIGTERM, SIGINT or SIGHUP, then drain: take no new datagram, finish the batch in
    hand (its commit and its answers), and return (whether SIGHUP asked for a reload, the port).
    A worker of `--workers` (reuse_port) leaves SIGHUP to its supervisor, which restarts the workers
    one at a time (cghub.workers). `ready_fd`: a pipe to write one byte to once the port is bound (how
    that supervisor knows a new worker serves)."""
    loop = asyncio.get_running_loop()
    receiver = _open_endpoint(hub, host, port, loop, reuse_port)
    stop = asyncio.Event()
    reload = False

    def on_hangup() -> None:
        nonlocal reload
        if reuse_port:
            return  # a worker: its supervisor reloads, or stops it (cghub.workers)
        reload = hangup_means_reload()
        stop.set()

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    for sig in handled[:2]:
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    # Tests and supervisors read the port from this line (port 0: the kernel chose it).
    log.info("hub listening on %s:%d", host, receiver.port)
    if ready_fd is not None:
        os.write(ready_fd, b"1")
        os.close(ready_fd)
    try:
        await stop.wait()
        in_hand = receiver.busy
        await receiver.drain()
        c = hub.counters
        log.info(
            "hub stopping: drained (batch in hand: %s); received %d, accepted %d, duplicates %d",
            "finished" if in_hand else "none", c["received"], c["accepted"], c["duplicate"],
        )
        return reload, receiver.port
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        receiver.close()


# ---- command line ---------------------------------------------------------------------------------
def _serve(hub: Hub, store: Store, args: argparse.Namespace, argv: list[str]) -> int:
    """`serve`: the optional parts around the hub (metrics endpoint, MQTT publisher), then the loop.
    SIGHUP (`systemctl reload`) to a hub of one process: it drains, stops those parts (the publisher
    waits for its PUBACKs), and runs again in place (exec: the same pid, the same port), reading its
    KEK files afresh; the devices retransmit what arrives meanwhile. With --workers the supervisor
    restarts the workers one at a time instead, and the others serve meanwhile."""
    metrics = publisher = None
    if args.metrics_port is not None:
        from cghub.metrics import HubMetrics

        metrics = hub.metrics = HubMetrics(hub, store)
        port = metrics.serve(args.metrics_port + args.worker_index if args.metrics_port else 0, args.metrics_host)
        log.info("metrics on http://%s:%d/metrics", args.metrics_host, port)
    # One publisher per process tree: worker 0's; of those on several hosts, the one holding the
    # store's publisher lease publishes and the others stand by (cghub.mqttout).
    if args.mqtt and args.worker_index == 0:
        from cghub import mqttout

        host, port = mqttout.parse_url(args.mqtt)
        publisher = mqttout.MqttOut(store, host, port, client_id=args.mqtt_client_id, metrics=metrics).start()
        hub.after_commit = publisher.wake
    reload = False
    try:
        reload, port = asyncio.run(serve(hub, args.host, args.port, args.reuse_port, args.ready_fd))
    except KeyboardInterrupt:
        pass
    finally:
        if publisher is not None:
            publisher.stop()
        if metrics is not None:
            metrics.stop()
    if reload:
        store.close()
        if args.out:
            hub.out.close()
        log.info("hub reloading: running again with the same arguments")
        sys.stderr.flush()
        again = [*drop_option(argv, "--port"), "--port", str(port)]  # port 0: the one the kernel chose
        os.execv(sys.executable, [sys.executable, "-m", "cghub.server", *again])
    return 0



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


def _kek_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("key-encryption key (root keys are stored wrapped under it; docs/hub.md)")
    g.add_argument("--kek-file", help="the KEK (default: $CELLGUARD_HUB_KEK, $CELLGUARD_HUB_KEK_FILE, hub.kek beside the db)")
    g.add_argument(
        "--old-kek-file", action="append", default=[],
        help="a KEK still read, never used to wrap, during a rotation (repeatable; or $CELLGUARD_HUB_KEK_OLD_FILE)",
    )
    g.add_argument("--pkcs11-lib", help="a PKCS#11 module (e.g. libsofthsm2.so): the KEK stays on the token")
    g.add_argument("--pkcs11-token", help="the token's label")
    g.add_argument("--pkcs11-key", default="cellguard-kek", help="the AES key's label on the token")


def _keyring(args: argparse.Namespace) -> keyseal.Keyring | None:
    if not hasattr(args, "kek_file"):  # queue, publish, stats: no key is opened, a KEK is optional
        return keyseal.keyring_from(args.db)
    pkcs11 = None
    if args.pkcs11_lib:
        pin = os.environ.get("CELLGUARD_PKCS11_PIN", "")  # never on the command line (ps shows it)
        pkcs11 = {"lib_path": args.pkcs11_lib, "token_label": args.pkcs11_token, "pin": pin, "key_label": args.pkcs11_key}
    return keyseal.keyring_from(args.db, args.kek_file, args.old_kek_file, pkcs11)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cellguard hub: per-message secured UDP endpoint")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("serve", help="receive datagrams on UDP")
    p.add_argument("--db", required=True)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=5683)
    p.add_argument("--out", help="JSON lines file for accepted messages (default stdout)")
    p.add_argument("--workers", type=int, default=1, help="N processes on one port (SO_REUSEPORT; needs PostgreSQL)")
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # set for each worker
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)  # a reload's new worker says it listens
    p.add_argument("--mqtt", metavar="URL", help="publish accepted messages to this MQTT broker (mqtt://host:port)")
    p.add_argument("--mqtt-client-id", default="cellguard-hub", help="the publisher's MQTT client id")
    p.add_argument("--metrics-port", type=int, help="serve /metrics (Prometheus) here; worker i uses this + i")
    p.add_argument("--metrics-host", default="127.0.0.1", help="the /metrics address (default: local only)")
    _kek_args(p)

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
    _kek_args(p)

    p = sub.add_parser("new-kek", help="create a key-encryption key file (random, mode 0600, never overwritten)")
    p.add_argument("--kek-file", required=True)

    p = sub.add_parser(
        "rotate-kek", help="rewrap every root key under --kek-file (every hub first holds both KEKs: docs/hub.md section 5)"
    )
    p.add_argument("--db", required=True)
    _kek_args(p)

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
    if args.cmd == "new-kek":
        try:
            kek = keyseal.create_kek_file(args.kek_file)
        except FileExistsError:
            log.error("%s exists: a KEK is never overwritten (its keys would be lost)", args.kek_file)
            return 1
        print(f"new KEK {kek.id.hex()} in {args.kek_file} (mode 0600): keep a copy apart from the database's backups")
        return 0
    try:
        keyring = _keyring(args)
        if args.cmd in ("serve", "register-device", "rotate-kek"):
            keyseal.require(keyring, "`hub %s`" % args.cmd)
    except keyseal.KekError as e:
        log.error("%s", e)
        return 2
    if args.cmd == "serve" and args.workers > 1:
        if "://" not in args.db:
            log.error("--workers needs a database that several processes share: --db postgresql://... (docs/hub.md)")
            return 2
        from cghub import workers

        return workers.supervise(list(sys.argv[1:] if argv is None else argv), args.workers, args.host, args.port)
    store = HubStore(args.db, keyring=keyring)
    if args.cmd == "rotate-kek":
        try:
            n = store.rewrap_keys()
        except keyseal.KekError as e:  # the rows before this one are rewrapped; a rerun goes on from here
            log.error("%s: give every KEK still in use with --old-kek-file (docs/hub.md section 5)", e)
            return 2
        print(f"rewrapped {n} root key(s) under KEK {keyring.current.id.hex()}")
        return 0
    if args.cmd == "serve":
        log.info("%s", keyring.describe())  # the operator checks this before `rotate-kek`
        out = open(args.out, "a") if args.out else sys.stdout  # noqa: SIM115
        hub = Hub(store, out)
        hub.update_provider = hub_updates.provider(store)  # chunks of published images (publish)
        return _serve(hub, store, args, list(sys.argv[1:] if argv is None else argv))
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
    rows = [{k: d[k] for k in d.keys() if k != "root_key"} for d in store.devices()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(
                f"{r['key_id']:>10} {r['device_id']:<20} seq<= {r['up_highest']:<8} down {r['down_seq']:<6} "
                f"epoch {r['epoch']} failures {r['failures']} {'SUSPENDED ' if r['suspended'] else ''}{'RETIRED ' if r['retired'] else ''}"
                f"{'UNLOCKED-UNIT' if r['unlocked_seen'] else ''}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
