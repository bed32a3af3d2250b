"""Over-the-air tests and benchmarks: the real hub on a real UDP port (with the update provider on a
clock the test controls) and a MicroPython device (mp_support/otadevice.py) driven line by line."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from cghub import updates as hub_updates
from cghub.server import HubServer
from harness import MP_SUPPORT, spawn_micropython
from hubkit import KEY_ID, ROOT, make_hub

DEVICE = (MP_SUPPORT / "otadevice.py").read_text()


@dataclass
class HubClock:
    t: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class OtaRig:
    """hub (cghub.server.Hub), updates (its Updates), clock (the hub's), dev (the device)."""

    tmp: Path
    kit: object
    blocks: int = 40  # of 4 KiB: two slots of a 64 KiB image, the state and the outbox
    heap: str = "1536K"  # the simulated flash lives in the heap too (its bytes, twice while it is made)
    window: int = 0  # chunks per request (0: the firmware's default)
    max_datagram: int = 1024  # the modem's largest datagram
    clock: HubClock = field(default_factory=HubClock)

    def __enter__(self) -> OtaRig:
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.hub = make_hub(self.tmp)
        self.hub.clock = self.clock
        self.updates = hub_updates.Updates(self.hub.store, self.clock)
        self.hub.update_provider = self.updates
        self.server = HubServer(self.hub).start()
        args = (
            self.server.port, ROOT.hex(), KEY_ID, str(self.kit.images["v1"]), self.blocks, self.window,
            self.max_datagram,
        )
        self.proc = spawn_micropython(
            DEVICE, heapsize=self.heap, args=args, extra_paths=(self.kit.lib,),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()
        self.server.stop()

    def do(self, command: str) -> dict:
        """Send one command to the device; its JSON answer (report + ok)."""
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        other = []  # what the interpreter printed besides (e.g. a finaliser's error at a power cut)
        while True:
            line = self.proc.stdout.readline()
            if line.startswith("{"):
                return json.loads(line)
            if not line:
                rest = "".join(other) + self.proc.stderr.read()
                raise AssertionError(f"device died on {command!r}:\n{rest}")
            other.append(line)

    def until(self, cond: str, steps: int = 3000) -> dict:
        out = self.do(f"until {cond} {steps}")
        assert out["ok"], (cond, out)
        return out["report"]

    def publish(self, name: str, chunk: int = hub_updates.DEFAULT_CHUNK) -> bytes:
        data = self.kit.images[name].read_bytes()
        with self.hub.lock:  # the hub's thread uses the same SQLite connection
            hub_updates.publish(self.hub.store, data, [KEY_ID], chunk)
        return data

    def target(self) -> dict:
        with self.hub.lock:
            return self.updates.target(KEY_ID)
