"""Platform-layer figures: the AES block on the unix port against CPython's `cryptography`."""

import time

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from harness import run_micropython

N = 2000

_MP = """
from cellguard import runtime
import time
aes = runtime.aes_block(bytes(16))
buf = bytearray(16)
t = time.ticks_us()
for _ in range(%d):
    aes.encrypt(buf, buf)
print(time.ticks_diff(time.ticks_us(), t))
""" % N


def run() -> dict:
    mp_us = int(run_micropython(_MP)) / N
    enc = Cipher(algorithms.AES(bytes(16)), modes.ECB()).encryptor()
    buf = bytes(16)
    t = time.perf_counter()
    for _ in range(N):
        buf = enc.update(buf)
    cp_us = (time.perf_counter() - t) * 1e6 / N
    return {
        "runtime.aes_block_us.mp": round(mp_us, 3),
        "runtime.aes_block_us.cryptography": round(cp_us, 3),
        "runtime.aes_block_ratio_mp_over_cryptography": round(mp_us / cp_us, 2),
    }
