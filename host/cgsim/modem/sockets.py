"""The emulated modem's UDP sockets, bridged to real UDP sockets on 127.0.0.1, with the faults of
a radio link (loss, duplication, reordering) and of the modem's small receive buffer."""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .atcmd import CME_NOT_ALLOWED, AtError


@dataclass
class UdpFaults:
    loss_out: int = 0  # drop the next N datagrams the device sends
    loss_in: int = 0  # drop the next N datagrams arriving for the device
    duplicate_in: int = 0  # deliver the next N arriving datagrams twice
    reorder_in: int = 0  # hold the next N arriving datagrams back behind the following one
    rx_limit: int = 16  # the modem's receive buffer, in datagrams; beyond it they are lost
    overflows: int = 0  # datagrams lost to a full receive buffer (read by tests)


@dataclass
class Socket:
    ident: int
    sock: socket.socket
    remote: tuple[str, int] | None = None  # SIMCom: the one remote fixed at open
    queue: deque = field(default_factory=deque)
    held: tuple | None = None


class Sockets(dict):
    """ident -> Socket. on_data(socket, size) is called when a datagram lands in an empty queue
    (the dialect turns it into its receive URC)."""

    def __init__(self, faults: UdpFaults, on_data: Callable[[Socket, int], None]):
        super().__init__()
        self.faults = faults
        self._on_data = on_data

    def free(self, limit: int) -> int:
        """The lowest identity below limit not in use (the modem's own choice of handle)."""
        return min(set(range(limit)) - set(self))

    def open(self, ident: int, local_port: int = 0) -> Socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", local_port))
        s.setblocking(False)
        sock = self[ident] = Socket(ident, s)
        return sock

    def close(self, ident: int) -> None:
        s = self.pop(ident, None)
        if s is None:
            raise AtError(CME_NOT_ALLOWED)
        s.sock.close()

    def close_all(self) -> None:
        for s in self.values():
            s.sock.close()
        self.clear()

    def get_open(self, ident: int) -> Socket:
        s = self.get(ident)
        if s is None:
            raise AtError(CME_NOT_ALLOWED)
        return s

    def send(self, ident: int, data: bytes, host: str, port: int) -> None:
        s = self.get_open(ident)
        if self.faults.loss_out > 0:
            self.faults.loss_out -= 1
            return
        s.sock.sendto(data, (host, port))

    def pop_datagram(self, ident: int) -> tuple[bytes, str, int] | None:
        s = self.get_open(ident)
        return s.queue.popleft() if s.queue else None

    def readable(self) -> list[socket.socket]:
        return [s.sock for s in self.values()]

    def service(self, ready: list) -> None:
        for s in list(self.values()):
            if s.sock in ready:
                self._arrived(s)

    def _arrived(self, s: Socket) -> None:
        try:
            data, addr = s.sock.recvfrom(65535)
        except OSError:
            return
        u = self.faults
        if u.loss_in > 0:
            u.loss_in -= 1
            return
        copies = 1
        if u.duplicate_in > 0:
            u.duplicate_in -= 1
            copies = 2
        was_empty = not s.queue
        for _ in range(copies):
            item = (data, addr[0], addr[1])
            if u.reorder_in > 0 and s.held is None and copies == 1:
                u.reorder_in -= 1
                s.held = item  # delivered behind the next datagram
                continue
            self._enqueue(s, item)
            if s.held is not None:
                held, s.held = s.held, None
                self._enqueue(s, held)
        if was_empty and s.queue:
            self._on_data(s, len(s.queue[0][0]))

    def _enqueue(self, s: Socket, item: tuple) -> None:
        if len(s.queue) >= self.faults.rx_limit:
            self.faults.overflows += 1
            return
        s.queue.append(item)
