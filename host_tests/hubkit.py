"""Test helpers shared by the hub and end-to-end tests: a registered hub and a CPython device."""

from __future__ import annotations

import io
import json
from pathlib import Path

from cellguard import crypto, message
from cghub import server as hubmod

ROOT = bytes(range(32))
KEY_ID = 1_000_001
DEVICE = "dev-1"


def make_hub(tmp_path: Path, root: bytes = ROOT, key_id: int = KEY_ID, **kw) -> hubmod.Hub:
    store = hubmod.HubStore(tmp_path / "hub.sqlite")
    if store.device(key_id) is None:
        store.register_device(key_id, DEVICE, root, **kw)
    return hubmod.Hub(store, io.StringIO())


def lines(hub: hubmod.Hub) -> list[dict]:
    return [json.loads(x) for x in hub.out.getvalue().splitlines()]


class MemCounter:
    def __init__(self, start: int = 0):
        self.n = start

    def next(self) -> int:
        self.n += 1
        return self.n - 1


def device_channel(mode=message.ENCRYPT, root: bytes = ROOT, key_id: int = KEY_ID, **kw) -> message.Channel:
    def derive(label, n):
        return crypto.hkdf(root, b"cellguard/v1", label, n)

    return message.Channel(derive, MemCounter(), key_id=key_id, mode=mode, **kw)


class HubProcess:
    """A real hub process (`python -m cghub.server serve`) on a database, its log in a file."""

    def __init__(self, db: Path, log: Path, port: int = 0, out: Path | None = None, extra: tuple = ()):
        import subprocess
        import sys

        self.log = log
        cmd = [sys.executable, "-m", "cghub.server", "serve", "--db", str(db), "--host", "127.0.0.1"]
        cmd += ["--port", str(port), *(["--out", str(out)] if out else []), *extra]
        self._logf = open(log, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self._logf)
        self.port = self._wait_port()

    def _wait_port(self, timeout: float = 30) -> int:
        # The hub logs "hub listening on HOST:PORT" once its socket is bound: wait for that line.
        import re
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"hub listening on [\d.]+:(\d+)", self.log.read_text())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                raise AssertionError("hub exited: " + self.log.read_text())
            time.sleep(0.02)
        raise AssertionError("hub did not start: " + self.log.read_text())

    def kill(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._logf.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self._logf.close()

    def rss_mb(self) -> float:
        """The process's peak resident set (VmHWM), MiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0


def _drain(s, quiet_s: float) -> int:
    """Bytes that arrive on `s` until it has been quiet for quiet_s."""
    s.settimeout(quiet_s)
    n = 0
    try:
        while True:
            n += len(s.recv(4096))
    except TimeoutError:
        return n


def amp_image() -> bytes:
    """The image the replay tests and the bench publish: 4 KiB, an MCUboot magic and nothing else."""
    image = bytearray(4096)
    image[0:4] = (0x96F3B83D).to_bytes(4, "little")
    return bytes(image)


def replay_kinds(dev) -> dict[str, bytes]:
    """One authentic datagram of every uplink kind, sealed by a cgsim.fleet.SimDevice. CHUNK REQ in
    both forms: the 12-byte one naming amp_image() and asking for the largest window (8 chunks of
    1 KiB: the most one request can draw), and older firmware's 7-byte one."""
    import hashlib

    from cghub import proto as hp

    iid = hashlib.sha256(amp_image()).digest()[:4]
    return {
        "reading": dev.seal(b"r" * 32)[1],
        "hello": dev.seal(bytes([hp.CTRL_HELLO, 0]) + b"1.0.0", control=True)[1],
        "tamper": dev.seal(bytes([hp.CTRL_TAMPER, 16]), control=True)[1],
        "chunk_req": dev.seal(hp.chunk_request(0, 1024, 8, iid), control=True)[1],
        "chunk_req_7": dev.seal(bytes([hp.CTRL_CHUNK_REQ]) + bytes(4) + (1024).to_bytes(2, "big"), control=True)[1],
        "dack": dev.seal(bytes([hp.CTRL_DACK, 0]), control=True)[1],
    }


KINDS = ("reading", "hello", "tamper", "chunk_req", "chunk_req_7", "dack")


def replay_ratios(port: int, devices: list, times: int = 5) -> dict[str, float]:
    """For each uplink kind, its own device (a cgsim.fleet.SimDevice, one key each, so that the once a
    second rule for one key does not hide another kind's answer) sends one datagram of the kind from
    its own address; a foreign address then replays it `times` times. Returns bytes received / bytes
    sent at the foreign address, per kind. After the replays the device sends a new reading and
    waits for its ack: the hub handles datagrams in order, so by then it has handled every replay."""
    import socket

    hub = ("127.0.0.1", port)
    ratios = {}
    for kind, dev in zip(KINDS, devices, strict=True):
        own = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        data = replay_kinds(dev)[kind]
        own.sendto(data, hub)
        foreign = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(times):
            foreign.sendto(data, hub)
        marker = dev.seal(b"s" * 32)[1]
        marker_seq = dev.next_seq - 1
        own.sendto(marker, hub)
        own.settimeout(60)  # the ack is the event; the bound only stops a hang
        while True:  # wait for the marker's ack (the answer to the first datagram may come first)
            got = dev.open(own.recv(4096))
            if got is not None and any(r[0] == "ack" and r[1] == marker_seq for r in _records(got[1])):
                break
        ratios[kind] = _drain(foreign, 0.2) / (times * len(data))
        foreign.close()
        own.close()
    return ratios


def _records(payload: bytes) -> list:
    from cghub import proto as hp

    return hp.parse_records(payload)
