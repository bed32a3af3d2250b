"""A UDP relay on 127.0.0.1 that loses, duplicates and reorders datagrams, and records them.

Device -> relay port -> hub, and the hub's answers back to the device's address. Used by the
end-to-end tests (faults) and the wire benchmark (byte counting).
"""

from __future__ import annotations

import random
import selectors
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class Faults:
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0  # probability a datagram is held back and sent after the next one


@dataclass
class Relay:
    hub_port: int
    faults: Faults = field(default_factory=Faults)
    seed: int = 1
    up: list[bytes] = field(default_factory=list)  # every datagram the device sent
    down: list[bytes] = field(default_factory=list)  # every datagram the hub sent

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.port = self.front.getsockname()[1]
        # One upstream socket per device address, as a NAT gives each new mapping its own port.
        self._backs: dict[tuple[str, int], socket.socket] = {}
        self._device_of: dict[socket.socket, tuple[str, int]] = {}
        self._sel = selectors.DefaultSelector()
        self._held: dict[str, bytes | None] = {"up": None, "down": None}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="relay")

    def __enter__(self) -> Relay:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.front.close()
        for b in self._backs.values():
            b.close()

    def _back_for(self, device: tuple[str, int]) -> socket.socket:
        b = self._backs.get(device)
        if b is None:
            b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            b.bind(("127.0.0.1", 0))
            self._backs[device] = b
            self._device_of[b] = device
            self._sel.register(b, selectors.EVENT_READ, "down")
        return b

    def _emit(self, direction: str, data: bytes, device: tuple[str, int]) -> None:
        f = self.faults
        if self._rng.random() < f.loss:
            return
        copies = 2 if self._rng.random() < f.duplicate else 1
        if self._held[direction] is None and self._rng.random() < f.reorder:
            self._held[direction] = data  # goes out after the next datagram in this direction
            return
        for _ in range(copies):
            self._send(direction, data, device)
        held = self._held[direction]
        if held is not None:
            self._held[direction] = None
            self._send(direction, held, device)

    def _send(self, direction: str, data: bytes, device: tuple[str, int]) -> None:
        if direction == "up":
            self._back_for(device).sendto(data, ("127.0.0.1", self.hub_port))
        else:
            self.front.sendto(data, device)

    def _run(self) -> None:
        sel = self._sel
        sel.register(self.front, selectors.EVENT_READ, "up")
        while not self._stop.is_set():
            for key, _ in sel.select(timeout=0.05):
                data, addr = key.fileobj.recvfrom(4096)
                if key.data == "up":
                    device = addr
                    self._back_for(device)
                    self.up.append(data)
                else:
                    device = self._device_of[key.fileobj]
                    self.down.append(data)
                self._emit(key.data, data, device)
        sel.close()
