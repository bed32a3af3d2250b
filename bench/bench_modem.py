"""Modem figures: boot to first datagram on the MicroPython unix port against the zero-delay
emulator (anchored to one plain AT round trip on the same pty, same run), and the AT engine's
heap allocation per URC line in steady state (gc.mem_alloc on the unix port)."""

from harness import run_micropython
from modem_fixtures import emulated_modem, run_driver, udp_echo_server

GOALS = {
    "modem.alloc_bytes_per_line": ("<=", 1.0),
    "modem.boot_to_first_datagram_ms": ("<=", 200),
}

_BOOT = """
t0 = runtime.ticks_ms()
attach()
s = m.open_udp()
s.sendto(b'first', '127.0.0.1', ECHO_PORT)
t1 = runtime.ticks_ms()
echo = s.recvfrom(3000)
t2 = runtime.ticks_ms()
N = 20
for _ in range(N):
    engine.command(b'AT')
t3 = runtime.ticks_ms()
print(runtime.ticks_diff(t1, t0), runtime.ticks_diff(t2, t0), runtime.ticks_diff(t3, t2) / N, echo[0] == b'first')
"""

_ALLOC = """
import gc
from cellguard import at, dialects, modem

class PreloadedStream:
    # Hands out preloaded bytes with a copy loop: the stream itself allocates nothing.
    def __init__(self, data):
        self.data = data
        self.pos = 0
    def write(self, buf):
        return len(buf)
    def readinto(self, buf):
        data = self.data
        pos = self.pos
        n = min(len(buf), len(data) - pos)
        for i in range(n):
            buf[i] = data[pos + i]
        self.pos = pos + n
        return n
    def wait_readable(self, ms):
        return self.pos < len(self.data)
    def close(self):
        pass

LINES = (b'+CEREG: 1,"0A1B","01A2D001",7\\r\\n', b'+QIURC: "recv",0\\r\\n', b'+CEREG: 2\\r\\n',
         b'+CPIN: READY\\r\\n', b'\\r\\n+QIURC: "recv",1\\r\\n')
N = %d
data = b''.join(LINES) * (N // len(LINES))
stream = PreloadedStream(data)
d = dialects.get('bg96')
engine = at.AtEngine(stream, d.line_buffer(), boot_urcs=d.boot_urcs)
m = modem.Modem(engine, d)
# Warm up (first-call caches), then measure the steady state.
stream.data = b''.join(LINES) * 4
engine.drain(0, 1000)
stream.data = data
stream.pos = 0
gc.collect()
gc.disable()
before = gc.mem_alloc()
t = __import__('time').ticks_us()
while stream.pos < len(data):
    engine.poll(0)
us = __import__('time').ticks_diff(__import__('time').ticks_us(), t)
after = gc.mem_alloc()
gc.enable()
print(after - before, N, us, m.reg_stat, d.rx_ready[0], d.rx_ready[1])
"""


def run() -> dict:
    with emulated_modem("bg96") as emu, udp_echo_server() as echo:
        out = run_driver(emu, _BOOT, echo_port=echo.port)
    first_ms, echo_ms, at_ms, ok = out.split()[-4:]
    assert ok == "True", out
    lines = 2000
    alloc, n, us, stat, r0, r1 = map(int, run_micropython(_ALLOC % lines, heapsize="256K").split())
    assert (stat, r0, r1) == (2, 1, 1)
    return {
        "modem.boot_to_first_datagram_ms": int(first_ms),
        "modem.boot_to_echo_ms": int(echo_ms),
        "modem.at_round_trip_ms": round(float(at_ms), 3),
        "modem.boot_in_at_round_trips": round(int(first_ms) / max(float(at_ms), 0.001), 1),
        "modem.alloc_bytes_per_line": round(alloc / n, 3),
        "modem.urc_us_per_line.mp": round(us / n, 2),
    }
