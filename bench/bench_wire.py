"""Bytes on the wire for the reference workload: a 32-byte reading every hour for a day, each one
delivery-confirmed, counting IP/UDP (or IP/TCP) headers both ways.

- ours:    the firmware (MicroPython unix port) -> counting UDP relay -> the hub, measured.
- dtls12:  a real DTLS 1.2 handshake per report (a sleeping cellular device has lost its NAT mapping
           by the next hour), MicroPython's `tls` client -> counting relay -> MicroPython's `tls`
           server, certificate (ECDSA P-256, generated at run time) handshake, the reading as one
           application record, a 2-byte application ack back, close_notify. Measured. The same with
           a pre-shared key (TLS-PSK-WITH-AES-128-GCM-SHA256, the cheapest handshake mbedTLS offers
           here) is reported beside it as dtls12_psk.
- tls_tcp: CPython `ssl` (TLS 1.3, same certificate) over TCP through a counting TCP relay, one
           connection per report. TLS bytes measured by the relay; TCP segments measured too: the
           kernel's own count (TCP_INFO segs_in + segs_out) on the relay's device-side socket once
           the connection is closed, handshake, pure ACKs and FINs included. Each segment is charged
           IPv4 20 + TCP 32 bytes (Linux sends the timestamp option on every segment), the SYN and
           SYN-ACK 8 more for their MSS/SACK/window-scale options.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
from cgsim.udprelay import Relay  # noqa: E402
from harness import micropython_cmd, micropython_env, run_micropython  # noqa: E402

REPORTS = 24
READING = 32
UDP_IP = 28  # IPv4 20 + UDP 8
TCP_IP = 52  # IPv4 20 + TCP 20 + timestamp option 12 (on every segment Linux sends)
SYN_OPTIONS = 8  # the SYN and SYN-ACK carry MSS, SACK-permitted and window scale besides
_TCP_CLOSE = 7

GOALS = {
    "wire.overhead_bytes.encrypt": ("<=", 14),
    "wire.ratio.dtls12_over_ours": (">=", 10),
}

_OURS = """
import sys, hostudp
from cellguard import crypto, message, outbox, runtime
import os
PORT, N = int(sys.argv[1]), int(sys.argv[2])
class Counter:
    def __init__(self): self.n = 0
    def next(self):
        self.n += 1
        return self.n - 1
root = bytes(range(32))
derive = lambda label, n: crypto.hkdf(root, b'cellguard/v1', label, n)
os.mkdir(FOLDER) if FOLDER.split('/')[-1] not in os.listdir(FOLDER.rsplit('/', 1)[0]) else None
ch = message.Channel(derive, Counter(), key_id=1000001)
ob = outbox.Outbox(ch, hostudp.HostUdp(), '127.0.0.1', PORT, folder=FOLDER, base_ms=5000)
for i in range(N):
    ob.enqueue(bytes(32))
    while ob.poll(2000):
        pass
print('OK')
"""


def measure_ours() -> tuple[int, int, int]:
    from cghub.server import HubServer
    from hubkit import make_hub

    with tempfile.TemporaryDirectory() as tmp:
        hub = make_hub(Path(tmp))
        # The reports are an hour apart: the hub's clock moves an hour per datagram received, so its
        # ACKs are what an hourly device gets (no recently-accepted neighbours in the bitmap).
        t0 = time.time()
        hub.clock = lambda: t0 + 3600 * hub.counters["received"]
        with HubServer(hub) as server, Relay(server.port) as relay:
            script = _OURS.replace("FOLDER", repr(tmp + "/outbox"))
            # An RP2040-sized heap: the modules are compiled here from .py source, which needs more
            # than running the .mpy files a board gets in its image (the figure is bytes, not RAM).
            run_micropython(script, args=(relay.port, REPORTS), timeout=60, heapsize="192K")
            time.sleep(0.1)
        assert hub.counters["accepted"] == REPORTS, hub.counters
        up = sum(len(d) + UDP_IP for d in relay.up)
        down = sum(len(d) + UDP_IP for d in relay.down)
        return up + down, len(relay.up[0]) - READING, len(relay.down[0])


def _cert(tmp: Path) -> tuple[Path, Path]:
    # A throwaway ECDSA P-256 certificate, generated now, never stored in the repository.
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hub.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    (tmp / "cert.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    (tmp / "key.der").write_bytes(
        key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    )
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    )
    return tmp / "cert.der", tmp / "key.der"


# One server process per report: a fresh DTLS server socket each hour, as a hub would see a device
# whose NAT mapping expired (and no stale socket can steal the next ClientHello).
_DTLS_SERVER = """
import socket, sys, tls
port = int(sys.argv[1])
cert = open(sys.argv[2], 'rb').read()
key = open(sys.argv[3], 'rb').read()
ctx = tls.SSLContext(tls.PROTOCOL_DTLS_SERVER)
if sys.argv[4] == 'psk':
    ctx.server_psk_keys = {b'device-1001': bytes(range(16))}
    ctx.set_ciphers(['TLS-PSK-WITH-AES-128-GCM-SHA256'])
else:
    ctx.load_cert_chain(cert, key)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(socket.getaddrinfo('127.0.0.1', port)[0][-1])
print('READY')
while True:
    _, addr = s.recvfrom(1, socket.MSG_PEEK)
    s.connect(addr)
    try:
        ss = ctx.wrap_socket(s, server_side=1, client_id=repr(addr).encode())
        break
    except OSError:
        continue  # HelloVerifyRequest sent: the client comes back with the cookie
ss.recv(64)
ss.send(b'\\x00\\x01')
ss.close()
print('SERVED')
"""

_DTLS_CLIENT = """
import socket, sys, tls
port, n = int(sys.argv[1]), int(sys.argv[2])
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # a new port each hour: the NAT forgot us
    s.connect(socket.getaddrinfo('127.0.0.1', port)[0][-1])
    ctx = tls.SSLContext(tls.PROTOCOL_DTLS_CLIENT)
    ctx.verify_mode = tls.CERT_NONE   # verification changes no byte on the wire
    if sys.argv[3] == 'psk':
        ctx.psk_identity = b'device-1001'
        ctx.psk_key = bytes(range(16))
        ctx.set_ciphers(['TLS-PSK-WITH-AES-128-GCM-SHA256'])
    ss = ctx.wrap_socket(s, server_hostname='hub.example')
    ss.send(bytes(32))
    ss.recv(16)
    ss.close()
print('SENT', n)
"""


def measure_dtls(tmp: Path, reports: int, mode: str = "cert") -> int:
    cert, key = _cert(tmp)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        server_port = probe.getsockname()[1]
    with Relay(server_port) as relay:
        for _ in range(reports):
            server = subprocess.Popen(
                [*micropython_cmd("1M"), "-c", _DTLS_SERVER, str(server_port), str(cert), str(key), mode],
                stdout=subprocess.PIPE,
                text=True,
                env=micropython_env(),
            )
            try:
                assert server.stdout is not None
                line = server.stdout.readline()
                assert "READY" in line, line
                run_micropython(_DTLS_CLIENT, heapsize="1M", args=(relay.port, 1, mode), timeout=30)
                server.wait(timeout=30)
            finally:
                if server.poll() is None:
                    server.kill()
                    server.wait()
        time.sleep(0.1)
    return sum(len(d) + UDP_IP for d in relay.up + relay.down)


class _TcpRelay:
    """Forwards TCP connections to `target`, counting payload bytes each way and, once a connection
    is closed, the segments the kernel sent and received on the device-side socket."""

    def __init__(self, target: int):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.bytes = 0
        self.segments = 0
        self.connections = 0
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                a, _ = self.listener.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.target))
            for s in (a, b):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t = threading.Thread(target=self._connection, args=(a, b), daemon=True)
            with self._lock:
                self.connections += 1
                self._threads.append(t)
            t.start()

    def _connection(self, a: socket.socket, b: socket.socket) -> None:
        pipes = [threading.Thread(target=self._pipe, args=pair, daemon=True) for pair in ((a, b), (b, a))]
        for p in pipes:
            p.start()
        for p in pipes:
            p.join()
        segments = _segments_when_closed(a)
        with self._lock:
            self.segments += segments
        a.close()
        b.close()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    self.bytes += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def wait(self, connections: int, timeout: float = 30) -> None:
        """Until `connections` connections were accepted and every one is closed and counted."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                threads = list(self._threads)
            if len(threads) >= connections:
                for t in threads:
                    t.join(max(0.0, deadline - time.monotonic()))
                if not any(t.is_alive() for t in threads):
                    return
            time.sleep(0.01)
        raise RuntimeError("tls_tcp: the relay's connections did not close")

    def close(self) -> None:
        self.listener.close()


def _segments_when_closed(sock: socket.socket, timeout: float = 5) -> int:
    """segs_in + segs_out from the kernel's TCP_INFO, read once the last ACK of our FIN has arrived
    (the socket reached CLOSE), so the count holds the whole connection."""
    import struct

    deadline = time.monotonic() + timeout
    while True:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        if info[0] == _TCP_CLOSE or time.monotonic() > deadline:
            break
        time.sleep(0.001)
    segs_out, segs_in = struct.unpack_from("<II", info, 136)  # struct tcp_info, Linux >= 4.2
    return segs_out + segs_in


def measure_tls_tcp(tmp: Path, reports: int) -> tuple[int, int]:
    cert_pem, key_pem = tmp / "cert.pem", tmp / "key.pem"
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert_pem, key_pem)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        for _ in range(reports):
            conn, _ = listener.accept()
            with sctx.wrap_socket(conn, server_side=True) as tls_conn:
                tls_conn.recv(64)
                tls_conn.sendall(b"\x00\x01")
                try:
                    tls_conn.unwrap()
                except (OSError, ssl.SSLError):
                    pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    relay = _TcpRelay(port)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname = False
    cctx.verify_mode = ssl.CERT_NONE
    for _ in range(reports):
        with socket.create_connection(("127.0.0.1", relay.port)) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with cctx.wrap_socket(raw, server_hostname="hub.example") as c:
                c.sendall(bytes(READING))
                c.recv(16)
                try:
                    c.unwrap()
                except (OSError, ssl.SSLError):
                    pass
    t.join(timeout=30)
    relay.wait(reports)
    relay.close()
    listener.close()
    headers = relay.segments * TCP_IP + relay.connections * 2 * SYN_OPTIONS
    return relay.bytes + headers, relay.bytes


def run() -> dict:
    ours, overhead, ack_len = measure_ours()
    sign_overhead = 1 + 3 + 2 + 16  # the same header with the default 16-byte HMAC tag
    from hubkit import device_channel

    sign = device_channel(mode=0)
    sign.counter.n = 8760  # a year of hourly readings: a two-byte sequence number
    sign_measured = len(sign.seal(bytes(READING))) - READING
    enc = device_channel()
    enc.counter.n = 8760
    enc_measured = len(enc.seal(bytes(READING))) - READING
    assert sign_measured == sign_overhead
    with tempfile.TemporaryDirectory() as tmp:
        dtls = measure_dtls(Path(tmp), REPORTS)
        dtls_psk = measure_dtls(Path(tmp), REPORTS, "psk")
        tls_tcp, tls_bytes = measure_tls_tcp(Path(tmp), REPORTS)
    return {
        "wire.overhead_bytes.encrypt": enc_measured,
        "wire.overhead_bytes.encrypt_first_256": overhead,
        "wire.overhead_bytes.sign": sign_measured,
        "wire.ack_datagram_bytes": ack_len,
        "wire.bytes_per_day.ours": ours,
        "wire.bytes_per_day.dtls12": dtls,
        "wire.bytes_per_day.tls_tcp": tls_tcp,
        "wire.bytes_per_day.tls_tcp_tls_only": tls_bytes,
        "wire.bytes_per_day.dtls12_psk": dtls_psk,
        "wire.ratio.dtls12_over_ours": round(dtls / ours, 2),
        "wire.ratio.dtls12_psk_over_ours": round(dtls_psk / ours, 2),
        "wire.ratio.tls_tcp_over_ours": round(tls_tcp / ours, 2),
    }
