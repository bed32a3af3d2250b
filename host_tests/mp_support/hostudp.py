# The datagram-socket interface (docs/modem.md, "Datagram sockets") over the host's real UDP stack:
#   sendto(data, host, port); recvfrom(timeout_ms) -> (bytes, host, port) or None; close()
# so the messaging layer runs end to end on the MicroPython unix port (or CPython) without a modem.
import select
import socket


class UdpError(Exception):
    """A send or receive failed (the modem driver raises its own error type for the same cases)."""


def _parse_sockaddr(addr):
    # CPython gives (host, port); the unix port gives the raw struct sockaddr_in bytes.
    if isinstance(addr, tuple):
        return addr[0], addr[1]
    port = (addr[2] << 8) | addr[3]
    return "%d.%d.%d.%d" % (addr[4], addr[5], addr[6], addr[7]), port


class HostUdp:
    def __init__(self, local_port=0, bind_host="127.0.0.1"):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(socket.getaddrinfo(bind_host, local_port)[0][-1])
        self._poll = select.poll()
        self._poll.register(self._sock, select.POLLIN)
        self._addrs = {}
        self.sent_bytes = 0
        self.received_bytes = 0

    def sendto(self, data, host, port):
        key = (host, port)
        addr = self._addrs.get(key)
        if addr is None:
            addr = self._addrs[key] = socket.getaddrinfo(host, port)[0][-1]
        try:
            self._sock.sendto(data, addr)
        except OSError as e:
            raise UdpError("sendto failed: %s" % e)  # noqa: B904 (MicroPython warns on exception chaining)
        self.sent_bytes += len(data)

    def recvfrom(self, timeout_ms):
        if not self._poll.poll(max(0, timeout_ms)):
            return None
        try:
            data, addr = self._sock.recvfrom(2048)
        except OSError as e:
            raise UdpError("recvfrom failed: %s" % e)  # noqa: B904 (MicroPython warns on exception chaining)
        self.received_bytes += len(data)
        host, port = _parse_sockaddr(addr)
        return data, host, port

    def close(self):
        self._sock.close()
