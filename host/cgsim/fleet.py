"""A fleet of simulated devices in one process: load for the hub, over real UDP.

Each simulated device has its own root key (derived from a seed and its key id, so the hub can be
given the same keys: `register()`), its own uplink sequence numbers, an outbox with the firmware's
rules (at most 8 in flight, every in-flight datagram within 32 sequences of the next, retransmitted
byte for byte with the firmware's backoff: base doubling to a ceiling, +-25 % jitter, until an ACK
covers it), a downlink replay window, and it DACKs command datagrams. The protocol is cghub.proto,
so this is a second implementation beside the firmware, not the firmware itself.

    python -m cgsim.fleet --hub 127.0.0.1:5683 --devices 1000 --key-base 100000 --window 60 --loss 0.1

prints one JSON object: what was sent, acknowledged, lost, the ack latencies, nonce reuse seen.
`--loss` puts a cgsim.udprelay relay (loss both ways) between the fleet and the hub.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import random
import selectors
import socket
import sys
import time
from dataclasses import dataclass, field

from cghub import proto as hp

MAX_INFLIGHT = 8  # protocol.md section 8
SPAN = 32


def root_key(seed: bytes, key_id: int) -> bytes:
    return hashlib.sha256(seed + key_id.to_bytes(4, "big")).digest()


def reading(key_id: int, n: int, size: int = 32) -> bytes:
    """A reading that names its device and number, so the hub's records can be checked one by one."""
    return (b"k%d n%d " % (key_id, n)).ljust(size, b".")[:size]


def register(store, count: int, key_base: int, seed: bytes = b"fleet") -> None:
    """Register the fleet's keys with a hub store, in one transaction."""
    store.register_devices(
        [(key_base + i, "fleet-%d" % (key_base + i), root_key(seed, key_base + i)) for i in range(count)]
    )


@dataclass
class _Entry:
    seq: int
    datagram: bytes
    payload: bytes
    first_sent: float
    due: float = 0.0
    backoff: float = 0.0


@dataclass
class SimDevice:
    key_id: int
    root: bytes
    encrypt: bool = True
    next_seq: int = 0
    queue: list[bytes] = field(default_factory=list)  # readings not yet sealed
    inflight: dict[int, _Entry] = field(default_factory=dict)
    down_highest: int = -1
    down_seen: set[int] = field(default_factory=set)
    acked: int = 0
    epoch: int = 0

    def __post_init__(self) -> None:
        self.up = hp.DirectionKeys.make(self.root, "up")
        self.down = hp.DirectionKeys.make(self.root, "down")

    def seal(self, payload: bytes, control: bool = False) -> tuple[int, bytes]:
        seq = self.next_seq
        self.next_seq += 1
        flags = (hp.FLAG_ENCRYPT if self.encrypt else 0) | (hp.FLAG_CONTROL if control else 0)
        return seq, hp.seal(self.up, flags, self.key_id, seq, payload)

    def open(self, data: bytes) -> tuple[int, bytes] | None:
        try:
            header = hp.parse_header(data)
            if header.key_id is not None or header.flags & (hp.FLAG_CONTROL | hp.FLAG_UNLOCKED):
                return None
            return header.seq, hp.open_(self.down, header, data)
        except hp.ProtocolError:
            return None


class Fleet:
    """The devices, their sockets (devices share them, as devices behind one NAT share an address
    range) and the event loop that sends, retransmits and handles answers."""

    def __init__(
        self,
        hub: tuple[str, int],
        count: int,
        key_base: int,
        seed: bytes = b"fleet",
        readings: int = 1,
        window_s: float = 60.0,
        base_s: float = 2.0,
        ceiling_s: float = 600.0,
        sockets: int = 0,
        rng: random.Random | None = None,
    ):
        self.hub = hub
        self.rng = rng or random.Random(1)
        self.devices = [SimDevice(key_base + i, root_key(seed, key_base + i)) for i in range(count)]
        self.base_s = base_s
        self.ceiling_s = ceiling_s
        n_sock = sockets or max(1, min(count, 1000))
        self.socks = []
        for _ in range(n_sock):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            self.socks.append(s)
        self.sel = selectors.DefaultSelector()
        for i, s in enumerate(self.socks):
            self.sel.register(s, selectors.EVENT_READ, i)
        self._on_sock: list[list[SimDevice]] = [[] for _ in self.socks]
        self._sock_of: dict[int, int] = {}
        for i, d in enumerate(self.devices):
            self._on_sock[i % n_sock].append(d)
            self._sock_of[d.key_id] = i % n_sock
        # Each device's first report at a random moment of the window (a burst), the rest spread after.
        self._timers: list[tuple[float, int, int]] = []
        self._index = {d.key_id: i for i, d in enumerate(self.devices)}
        self._t0 = time.monotonic()
        for i in range(count):
            for n in range(readings):
                at = self.rng.uniform(0, window_s) + n * window_s
                heapq.heappush(self._timers, (self._t0 + at, i, n + 1))  # n+1 > 0: a reading to queue
        self.stats = {
            "devices": count,
            "readings": count * readings,
            "sent": 0,
            "resent": 0,
            "acked": 0,
            "down_received": 0,
            "down_rejected": 0,
            "down_replayed": 0,
            "dacks": 0,
            "bytes_up": 0,
            "bytes_down": 0,
        }
        self.latencies_ms: list[float] = []
        self.acked_payloads: list[bytes] = []
        self.down_digests: dict[tuple[int, int], bytes] = {}
        self.down_nonce_reuse = 0

    def close(self) -> None:
        self.sel.close()
        for s in self.socks:
            s.close()

    # ---- sending ---------------------------------------------------------------------------------------
    def _send(self, d: SimDevice, datagram: bytes) -> None:
        try:
            self.socks[self._sock_of[d.key_id]].sendto(datagram, self.hub)
        except BlockingIOError:
            pass  # a full send buffer is a loss; the backoff covers it
        self.stats["bytes_up"] += len(datagram)

    def _arm(self, d: SimDevice, e: _Entry, now: float) -> None:
        e.backoff = self.base_s if not e.backoff else min(e.backoff * 2, self.ceiling_s)
        e.due = now + e.backoff * self.rng.uniform(0.75, 1.25)
        heapq.heappush(self._timers, (e.due, self._index[d.key_id], -e.seq - 1))

    def _pump(self, d: SimDevice, now: float) -> None:
        # Seal and send what the firmware's in-flight rules allow.
        while d.queue and len(d.inflight) < MAX_INFLIGHT:
            if d.inflight and d.next_seq - min(d.inflight) >= SPAN:
                return
            payload = d.queue.pop(0)
            seq, datagram = d.seal(payload)
            e = d.inflight[seq] = _Entry(seq, datagram, payload, now)
            self.stats["sent"] += 1
            self._send(d, datagram)
            self._arm(d, e, now)

    def _timer(self, i: int, tag: int, now: float) -> None:
        d = self.devices[i]
        if tag > 0:
            d.queue.append(reading(d.key_id, tag))
            self._pump(d, now)
            return
        e = d.inflight.get(-tag - 1)
        if e is None or e.due > now + 1e-9:
            return  # acknowledged since, or re-armed
        self.stats["resent"] += 1
        self._send(d, e.datagram)
        self._arm(d, e, now)

    # ---- receiving -------------------------------------------------------------------------------------
    def _received(self, sock_index: int, data: bytes, now: float) -> None:
        self.stats["bytes_down"] += len(data)
        for d in self._on_sock[sock_index]:
            opened = d.open(data)
            if opened is not None:
                break
        else:
            self.stats["down_rejected"] += 1
            return
        seq, payload = opened
        self.stats["down_received"] += 1
        digest = hashlib.sha256(data).digest()
        prior = self.down_digests.setdefault((d.key_id, seq), digest)
        if prior != digest:
            self.down_nonce_reuse += 1  # the hub sealed two datagrams under one downlink number
        replay = seq in d.down_seen or seq <= d.down_highest - 32
        d.down_seen.add(seq)
        d.down_highest = max(d.down_highest, seq)
        if len(d.down_seen) > 64:
            d.down_seen = {s for s in d.down_seen if s > d.down_highest - 32}
        records = hp.parse_records(payload)
        commands = any(r[0] in ("config", "reboot", "update_offer", "decommission") for r in records)
        if replay:
            self.stats["down_replayed"] += 1
            if commands:
                self._dack(d, seq)
            return
        for r in records:
            if r[0] == "ack":
                for s in {r[1], *r[2]}:
                    e = d.inflight.pop(s, None)
                    if e is not None:
                        self.stats["acked"] += 1
                        self.acked_payloads.append(e.payload)
                        d.acked += 1
                        self.latencies_ms.append((now - e.first_sent) * 1000)
        if commands:
            self._dack(d, seq)
        self._pump(d, now)

    def _dack(self, d: SimDevice, down_seq: int) -> None:
        _, datagram = d.seal(bytes([hp.CTRL_DACK]) + down_seq.to_bytes(hp.uint_len(down_seq), "big"), control=True)
        self.stats["dacks"] += 1
        self._send(d, datagram)

    # ---- the loop ----------------------------------------------------------------------------------------
    def done(self) -> bool:
        return self.stats["acked"] >= self.stats["readings"]

    def run(self, timeout_s: float, until=None) -> dict:
        """Run until every reading is acknowledged, `until()` is true, or timeout_s has passed."""
        deadline = time.monotonic() + timeout_s
        while not self.done() and not (until is not None and until()):
            now = time.monotonic()
            if now >= deadline:
                break
            while self._timers and self._timers[0][0] <= now:
                _, i, tag = heapq.heappop(self._timers)
                self._timer(i, tag, now)
            wait = min(deadline, self._timers[0][0] if self._timers else deadline) - time.monotonic()
            for key, _ in self.sel.select(max(0.0, min(wait, 0.5))):
                sock = key.fileobj
                for _ in range(64):
                    try:
                        data = sock.recv(4096)
                    except BlockingIOError:
                        break
                    self._received(key.data, data, time.monotonic())
        return self.report()

    def report(self) -> dict:
        lat = sorted(self.latencies_ms)

        def pct(p: float) -> float:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 2) if lat else 0.0

        out = dict(self.stats)
        out["unacked"] = out["readings"] - out["acked"]
        out["ack_p50_ms"] = pct(0.50)
        out["ack_p99_ms"] = pct(0.99)
        out["down_nonce_reuse"] = self.down_nonce_reuse
        out["elapsed_s"] = round(time.monotonic() - self._t0, 2)
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="a fleet of simulated devices reporting to a hub over UDP")
    p.add_argument("--hub", required=True, help="host:port")
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--key-base", type=int, default=100000)
    p.add_argument("--seed", default="fleet")
    p.add_argument("--readings", type=int, default=1, help="readings per device")
    p.add_argument("--window", type=float, default=60.0, help="seconds over which the devices first report")
    p.add_argument("--base", type=float, default=2.0, help="retransmission backoff base, s")
    p.add_argument("--ceiling", type=float, default=600.0)
    p.add_argument("--loss", type=float, default=0.0, help="loss both ways, through cgsim.udprelay")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--register-db", help="register the fleet's keys in this hub database first")
    args = p.parse_args(argv)
    host, port = args.hub.rsplit(":", 1)
    seed = args.seed.encode()
    if args.register_db:
        from cghub.server import HubStore

        store = HubStore(args.register_db)  # root keys sealed under the operator's KEK ($CELLGUARD_HUB_KEK)
        register(store, args.devices, args.key_base, seed)
        store.close()
    relay = None
    target = (host, int(port))
    if args.loss:
        from cgsim.udprelay import Faults, Relay

        relay = Relay(int(port), Faults(loss=args.loss)).__enter__()
        target = ("127.0.0.1", relay.port)
    fleet = Fleet(target, args.devices, args.key_base, seed, args.readings, args.window, args.base, args.ceiling)
    try:
        out = fleet.run(args.timeout)
    finally:
        fleet.close()
        if relay is not None:
            relay.__exit__(None, None, None)
    if relay is not None:
        out["relay_up"] = len(relay.up)
        out["relay_down"] = len(relay.down)
    print(json.dumps(out, sort_keys=True))
    return 0 if out["unacked"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
