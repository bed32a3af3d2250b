"""CircuitPython-path and sensor figures, each beside its anchor in the same run, on the unix port:
aesio's one-block-per-call AES against cryptolib's whole-buffer call; the bundled pure-Python
adafruit_hashlib (for CircuitPython ports without hashlib) against the built-in SHA-256; the
SensorMonitor's cost on top of the bare Adafruit driver; the telemetry reading's size."""

import tempfile
from pathlib import Path

from cgdev.bundle import DEVICE_LIBS, REQUIREMENTS, bundle, read_names, read_pins
from harness import MP_SUPPORT, run_micropython

CPY_SHIM = MP_SUPPORT / "cpy_shim"
N_AES = 500
N_SHA = 20
N_READ = 30

_AES = """
from cellguard import runtime
import time
aes = runtime.aes_block(bytes(16))
buf = bytearray(64)
t = time.ticks_us()
for _ in range(%d):
    aes.encrypt(buf, buf)
print(time.ticks_diff(time.ticks_us(), t))
""" % N_AES

_SHA = """
import time
PURE
data = bytes(1024)
t = time.ticks_us()
for _ in range(%d):
    h = sha256(data).digest()
print(time.ticks_diff(time.ticks_us(), t))
""" % N_SHA

_READ = """
import time, i2cemu, sht4xemu
from cellguard import sensors, reading
from cellguard.i2cbus import LockedI2C
bus = i2cemu.default_bus(); bus.attach(0x44, sht4xemu.Sht4x())
i2c = LockedI2C(i2cemu.MachineI2C(bus))
opener = sensors.sht4x_opener(i2c)
drv = opener()
t = time.ticks_us()
for _ in range(%d):
    drv.measurements
bare = time.ticks_diff(time.ticks_us(), t)
mon = sensors.SensorMonitor(opener)
mon.read()
t = time.ticks_us()
for _ in range(%d):
    r = mon.read()
full = time.ticks_diff(time.ticks_us(), t)
print(bare, full, len(reading.encode(r)))
""" % (N_READ, N_READ)

GOALS = {
    "cpy.reading_payload_bytes": ("<=", 12),
    "cpy.monitor_overhead_ratio": ("<=", 1.2),
}


def run() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        lib = Path(tmp) / "lib"
        bundle(lib, read_names(DEVICE_LIBS), read_pins(REQUIREMENTS), mpy=True)
        aes_mp = int(run_micropython(_AES)) / N_AES
        aes_cpy = int(run_micropython(_AES, extra_paths=(CPY_SHIM,))) / N_AES
        sha_builtin = int(run_micropython(_SHA.replace("PURE", "from hashlib import sha256"))) / N_SHA
        sha_pure = int(
            run_micropython(_SHA.replace("PURE", "from adafruit_hashlib import sha256"), extra_paths=(lib,))
        ) / N_SHA
        bare, full, size = (int(x) for x in run_micropython(_READ, extra_paths=(lib,)).split())
    return {
        "cpy.aes_64B_us.cryptolib": round(aes_mp, 2),
        "cpy.aes_64B_us.aesio_path": round(aes_cpy, 2),
        "cpy.aes_ratio_aesio_over_cryptolib": round(aes_cpy / aes_mp, 2),
        "cpy.sha256_1KiB_us.builtin": round(sha_builtin, 1),
        "cpy.sha256_1KiB_us.adafruit_hashlib": round(sha_pure, 1),
        "cpy.sha256_ratio_pure_over_builtin": round(sha_pure / sha_builtin, 1),
        "cpy.sht4x_read_ms.bare_driver": round(bare / N_READ / 1000, 2),
        "cpy.sht4x_read_ms.monitor": round(full / N_READ / 1000, 2),
        "cpy.monitor_overhead_ratio": round(full / bare, 3),
        "cpy.reading_payload_bytes": size,
    }
