"""Per-message crypto on the MicroPython unix port: seal time, its ratio to the raw AES calls it
needs (measured in the same run), and the bytes it allocates."""

from harness import run_micropython

N = 3000

_MP = """
import gc, time
from cellguard import crypto, message, runtime
class Counter:
    def __init__(self): self.n = 300
    def next(self):
        self.n += 1
        return self.n
root = bytes(range(32))
derive = lambda label, n: crypto.hkdf(root, b'cellguard/v1', label, n)
gc.collect()
ram0 = gc.mem_alloc()
ch = message.Channel(derive, Counter(), key_id=1000001, mode=message.ENCRYPT)
gc.collect()
ram = gc.mem_alloc() - ram0
reading = bytes(32)
out = bytearray(128)
n = ch.seal_into(reading, out)
hlen = n - 32 - 8
seal = ch.seal_into
for _ in range(50):
    seal(reading, out)
t = time.ticks_us()
for _ in range(N):
    seal(reading, out)
seal_us = time.ticks_diff(time.ticks_us(), t) / N
# The AES block calls one seal makes, each on a 16-byte block: B_0, the header block, two message
# blocks (CBC-MAC), two counter blocks and S_0 (CTR) = 7, timed unrolled like the seal's own calls.
aes = runtime.aes_block(bytes(16)).encrypt
b = bytearray(16)
assert 1 + (2 + hlen + 15) // 16 + 2 * (32 // 16) + 1 == 7
for _ in range(50):
    aes(b, b)
t = time.ticks_us()
for _ in range(N):
    aes(b, b); aes(b, b); aes(b, b); aes(b, b); aes(b, b); aes(b, b); aes(b, b)
aes_us = time.ticks_diff(time.ticks_us(), t) / N
t = time.ticks_us()
for _ in range(N):
    pass
loop_us = time.ticks_diff(time.ticks_us(), t) / N
gc.collect()
gc.disable()
a0 = gc.mem_alloc()
for _ in range(100):
    seal(reading, out)
alloc = (gc.mem_alloc() - a0) / 100
gc.enable()
print(seal_us, aes_us - loop_us, alloc, n, ram)
"""

GOALS = {
    "crypto.seal_vs_aes_ratio": ("<=", 3),
    "crypto.seal_alloc_bytes": ("<=", 512),
}


def run() -> dict:
    seal_us, aes_us, alloc, n, ram = (float(x) for x in run_micropython("N = %d\n" % N + _MP).split())
    return {
        "crypto.seal_us.mp": round(seal_us, 2),
        "crypto.seal_aes_calls_us.mp": round(aes_us, 2),
        "crypto.seal_vs_aes_ratio": round(seal_us / aes_us, 2),
        "crypto.seal_alloc_bytes": round(alloc, 1),
        "crypto.sealed_bytes_32B_reading": int(n),
        "crypto.channel_ram_bytes.mp": int(ram),  # a Channel's keys, buffers and windows, both directions
    }
