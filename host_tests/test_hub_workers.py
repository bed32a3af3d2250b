"""Several hub processes, one truth: `serve --workers N` on one UDP port and one PostgreSQL, racing on
duplicates from many source addresses; and SIGTERM, which drains the batch in hand and exits cleanly."""

import json
import os
import pty
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time

from cellguard import downlink
from cghub import keyseal
from cghub import proto as hp
from cghub.pgstore import PostgresStore
from cghub.store import SqliteStore
from hubkit import DEVICE, KEY_ID, ROOT, device_channel
from hubproc import HubProcess, scrape

DOWN = hp.DirectionKeys.make(ROOT, "down")
SOURCES = 16  # source addresses: SO_REUSEPORT spreads them over the workers by hash


def records(reply: bytes) -> list:
    """A downlink's records, opened without the device's replay window (we look at every copy)."""
    return downlink.parse(hp.open_(DOWN, hp.parse_header(reply), reply))


def _is_ack(reply: bytes) -> bool:
    return records(reply)[0][0] == "ack"


def _acked(reply: bytes) -> list[int]:
    rec = records(reply)[0]
    return downlink.acked(rec[1], rec[2])


def _sockets(n):
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
        s.settimeout(60)
    return socks


def test_workers_race_on_duplicates_and_accept_each_datagram_once(pg_url, tmp_path):
    store = PostgresStore(pg_url, keyring=keyseal.keyring_from())
    store.register_device(KEY_ID, DEVICE, ROOT)
    store.queue_command(KEY_ID, hp.reboot_record())  # a command: sealed once, under one sequence
    out = tmp_path / "messages.jsonl"
    dev = device_channel()
    grams = [dev.seal(b"reading %d" % i) for i in range(20)]
    socks = _sockets(SOURCES)
    markers = [dev.seal(b"marker %d" % i) for i in range(SOURCES)]
    seq_of = {m: len(grams) + i for i, m in enumerate(markers)}
    with HubProcess(["--db", pg_url, "--out", str(out), "--metrics-port", "0"], workers=2) as hub:
        replies = {s: [] for s in socks}
        for g in grams:  # every datagram from every source at once: the workers race on each
            for s in socks:
                s.sendto(g, ("127.0.0.1", hub.port))
        # Copies are not all answered (no amplification: a duplicate is acked at most once a second).
        # Then each source sends one new datagram: one source's datagrams reach one worker in order,
        # so the marker's ack means that worker is through everything the source sent before.
        for s, m in zip(socks, markers, strict=True):
            s.sendto(m, ("127.0.0.1", hub.port))
        for s, m in zip(socks, markers, strict=True):
            while True:
                r = s.recvfrom(2048)[0]
                replies[s].append(r)
                if _is_ack(r) and seq_of[m] in _acked(r):
                    break
        # Each worker serves its own /metrics (port 0 here: each its own; --metrics-port P: P + i).
        ports = [int(re.search(r":(\d+)/metrics", x).group(1)) for x in hub.wait_for("metrics on http", count=2)]
        scraped = [scrape(p) for p in ports]
        assert hub.stop() == 0
    total = len(grams) + SOURCES
    assert sum(m["cellguard_hub_accepted_total"] for m in scraped) == total
    assert all(m["cellguard_hub_devices_seen_last_hour"] == 1 for m in scraped)  # from the shared database
    stopped = hub.wait_for(r"hub stopping", count=2)
    received = [int(re.search(r"received (\d+)", x).group(1)) for x in stopped]
    accepted = [int(re.search(r"accepted (\d+)", x).group(1)) for x in stopped]
    assert all(n > 0 for n in received), stopped  # both workers took part
    assert sum(received) == len(grams) * SOURCES + SOURCES
    assert sum(accepted) == total  # ... and each datagram was accepted by exactly one of them
    rows = store.messages()
    assert sorted(m.seq for _, m in rows) == list(range(total))
    assert len(out.read_text().splitlines()) == total
    everything = [r for rs in replies.values() for r in rs]
    # Whichever worker sealed it, no two different downlinks share a sequence number (a command is
    # resent byte for byte, so the same bytes may come several times: that is one downlink).
    distinct = set(everything)
    seqs = [hp.parse_header(r).seq for r in distinct]
    assert len(seqs) == len(set(seqs))
    assert any(not _is_ack(r) for r in distinct)  # the command went out


def test_workers_need_a_shared_database(tmp_path):
    from cghub import server as hubmod

    assert hubmod.main(["serve", "--db", str(tmp_path / "hub.sqlite"), "--workers", "2"]) == 2


def test_sigterm_drains_the_batch_in_hand_and_exits_cleanly(tmp_path):
    db = tmp_path / "hub.sqlite"
    SqliteStore(db, keyring=keyseal.keyring_from()).register_device(KEY_ID, DEVICE, ROOT)
    out = tmp_path / "messages.jsonl"
    dev = device_channel()
    grams = [dev.seal(b"r%d" % i) for i in range(300)]
    (sock,) = _sockets(1)
    with HubProcess(["--db", str(db), "--out", str(out)]) as hub:
        for g in grams:
            sock.sendto(g, ("127.0.0.1", hub.port))
        first = sock.recvfrom(2048)[0]  # the hub is at work: stop it now, in the middle of the stream
        code = hub.stop()
    assert code == 0
    assert hub.wait_for(r"hub stopping: drained")
    answered = [first]
    sock.settimeout(0.5)  # the hub has exited: what it answered is already in our socket's buffer
    try:
        while True:
            answered.append(sock.recvfrom(2048)[0])
    except TimeoutError:
        pass
    acked = set()
    for r in answered:
        for rec in downlink.parse(dev.open(r)[2]):
            if rec[0] == "ack":
                acked.update(downlink.acked(rec[1], rec[2]))
    stored = set(SqliteStore(db).accepted_seqs(KEY_ID))
    written = [json.loads(x)["seq"] for x in out.read_text().splitlines()]
    assert acked <= stored  # nothing answered that was not committed
    assert sorted(written) == sorted(stored)  # everything committed was written out, once


# ---- SIGHUP: the workers restarted one at a time ------------------------------------------------------
class _Fleet:
    """Devices, each on its own socket (its own source address), each sending its next reading once the
    last is acknowledged and the same datagram again after RETRY_S unanswered: as devices in the field."""

    RETRY_S = 0.2

    def __init__(self, store, port: int, count: int = 24, key_base: int = 51_000):
        from cgsim import fleet as fl

        fl.register(store, count, key_base, b"reload")
        self.devices = [fl.SimDevice(key_base + i, fl.root_key(b"reload", key_base + i)) for i in range(count)]
        self.port = port
        self.answers: list[float] = []  # time.monotonic() of every answer
        self.acked = {d.key_id: 0 for d in self.devices}  # readings answered, per device
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(60)

    def wait_answers(self, n: int, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while len(self.answers) < n:
            assert time.monotonic() < end, f"{len(self.answers)} answers, waited for {n}"
            time.sleep(0.01)

    def _run(self) -> None:
        from cgsim import fleet as fl

        socks = _sockets(len(self.devices))
        try:
            sel = selectors.DefaultSelector()
            pending = {}
            for s, d in zip(socks, self.devices, strict=True):
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ, d)
                pending[d.key_id] = [d.seal(fl.reading(d.key_id, 0))[1], 0.0]
            while not self._stop.is_set():
                now = time.monotonic()
                for s, d in zip(socks, self.devices, strict=True):
                    gram, sent = pending[d.key_id]
                    if now - sent >= self.RETRY_S:
                        s.sendto(gram, ("127.0.0.1", self.port))
                        pending[d.key_id][1] = now
                for key, _ in sel.select(0.02):
                    s, d = key.fileobj, key.data
                    try:
                        opened = d.open(s.recv(2048))
                    except OSError:
                        continue
                    acks = downlink.parse(opened[1]) if opened else []
                    if not any(r[0] == "ack" and d.next_seq - 1 in downlink.acked(r[1], r[2]) for r in acks):
                        continue  # the answer to a copy sent earlier: this reading is still unanswered
                    self.answers.append(time.monotonic())
                    self.acked[d.key_id] += 1
                    pending[d.key_id] = [d.seal(fl.reading(d.key_id, self.acked[d.key_id]))[1], 0.0]
        finally:
            for s in socks:
                s.close()


def _pids(line: str) -> set[int]:
    """The worker pids a supervisor's line names: "(pids 11 12)" at start, "workers 13 14" after a reload."""
    return {int(x) for x in re.search(r"(?:pids|workers) ([\d ]+)\)?$", line).group(1).split()}


def test_sighup_restarts_the_workers_one_at_a_time_and_the_hub_answers_throughout(pg_url):
    # `systemctl reload`: each worker drains and exits, its successor starts, and only once it listens
    # is the next one restarted. While one is away the other has every source address (the kernel
    # rehashes over the sockets bound), so answers keep coming in each gap; nothing is accepted twice.
    store = PostgresStore(pg_url, keyring=keyseal.keyring_from())
    with HubProcess(["--db", pg_url], workers=2) as hub, _Fleet(store, hub.port) as fleet:
        before = _pids(hub.wait_for(r"hub supervisor: 2 workers")[0])
        fleet.wait_answers(50)
        hub.proc.send_signal(signal.SIGHUP)
        done = hub.wait_for(r"hub reload done")[0]
        after = len(fleet.answers)
        fleet.wait_answers(after + 50)  # and the new workers serve
        for i in range(2):  # each worker's gap: from its drain to its successor's first "listening"
            gone = hub.stamp(r"hub stopping: drained", i)
            back = hub.stamp(r"hub listening on", 2 + i)
            assert gone < back
            assert [t for t in fleet.answers if gone < t < back], f"no answer while worker {i} restarted"
        assert hub.stop() == 0
    new = _pids(done)
    assert len(new) == 2 and not new & before  # both replaced
    assert not [x for x in hub.lines if "internal error" in x or "rejected" in x or "halted" in x]
    stored = {}
    for _, m in store.messages(limit=1 << 30):
        stored.setdefault(m.key_id, []).append(m.seq)
    for key_id, n in fleet.acked.items():  # every answered reading stored once; at most the one in flight more
        seqs = sorted(stored.get(key_id, []))
        assert seqs in (list(range(n)), list(range(n + 1))), (key_id, n, seqs)


def test_a_reload_whose_new_worker_cannot_start_halts_and_the_others_keep_serving(pg_url, tmp_path):
    kek = tmp_path / "hub.kek"
    keyseal.create_kek_file(kek)
    store = PostgresStore(pg_url, keyring=keyseal.keyring_from(kek_file=kek))
    with HubProcess(["--db", pg_url, "--kek-file", str(kek)], workers=2) as hub, _Fleet(store, hub.port) as fleet:
        fleet.wait_answers(20)
        kek.chmod(0o644)  # a broken configuration: a KEK others may read is refused at start
        hub.proc.send_signal(signal.SIGHUP)
        hub.wait_for(r"hub reload halted: the new worker 0 exited \(2\)")
        n = len(fleet.answers)
        fleet.wait_answers(n + 50)  # worker 1 serves every device on its own
        kek.chmod(0o600)
        hub.proc.send_signal(signal.SIGHUP)  # fixed: the next reload starts the empty slot first
        done = hub.wait_for(r"hub reload done")[0]
        assert "-" not in done.split("workers", 1)[1]
        fleet.wait_answers(len(fleet.answers) + 50)
        assert hub.stop() == 0
    assert hub.wait_for(r"the KEK file .* is readable by others")


def test_sighup_to_a_hub_of_one_process_drains_and_runs_it_again_in_place(tmp_path):
    # Without --workers there is no other worker to serve meanwhile: the hub drains, runs itself again
    # (exec: the same pid for systemd, the same port, the JSON lines file appended to) and serves on.
    db, out = tmp_path / "hub.sqlite", tmp_path / "messages.jsonl"
    SqliteStore(db, keyring=keyseal.keyring_from()).register_device(KEY_ID, DEVICE, ROOT)
    dev = device_channel()
    (sock,) = _sockets(1)

    def acked(n: int) -> bool:
        sock.sendto(dev.seal(b"reading %d" % n), ("127.0.0.1", hub.port))
        return n in _acked(sock.recvfrom(2048)[0])

    with HubProcess(["--db", str(db), "--out", str(out)]) as hub:
        assert acked(0)
        hub.proc.send_signal(signal.SIGHUP)
        hub.wait_for("hub reloading: running again")
        again = hub.wait_for(r"hub listening on", count=2)[1]
        assert again.endswith(f":{hub.port}") and hub.proc.poll() is None
        assert acked(1)
        hub.proc.send_signal(signal.SIGHUP)  # and again: the arguments do not grow
        hub.wait_for(r"hub listening on", count=3)
        assert acked(2)
        assert hub.stop() == 0
    assert [json.loads(x)["seq"] for x in out.read_text().splitlines()] == [0, 1, 2]
    assert len(hub.wait_for(r"hub stopping: drained", count=3)) == 3


def test_a_hub_started_in_a_terminal_stops_when_the_terminal_hangs_up(tmp_path):
    # There SIGHUP is the terminal going away, not `systemctl reload`: drained and stopped, not run again.
    db = tmp_path / "hub.sqlite"
    SqliteStore(db, keyring=keyseal.keyring_from()).register_device(KEY_ID, DEVICE, ROOT)
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cghub.server", "serve", "--db", str(db), "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.DEVNULL, stderr=follower,
    )
    os.close(follower)
    seen = b""
    try:
        while b"hub listening" not in seen:
            seen += os.read(leader, 4096)
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(60) == 0
        try:
            while True:
                chunk = os.read(leader, 4096)
                if not chunk:
                    break
                seen += chunk
        except OSError:  # EIO: the hub closed its side
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
    assert b"hub stopping: drained" in seen and b"reloading" not in seen
