"""Boot-part figures: signature verification on the unix port (beside CPython's `cryptography` in the
same run), a whole boot decision with a 64 KiB image, the heap verification needs, and the power-cut
sweep's totals (every cut point, clean and torn), and the retention sweep's (flash that decays
between power cuts: flipped bits, weak cells, read errors at the end of an update-and-revert life)."""

import hashlib
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from boot_kit import device_script, make_kit
from cgdev import image as image_tool
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from harness import RuntimeFailed, micropython_cmd, micropython_env, run_micropython

RUNS = 20
GOALS = {
    "boot.verify_ms.ed25519.mp": ("<=", 30),
    "powercut.bricked": ("==", 0),
    "powercut.unverified_boots": ("==", 0),
    "powercut.adopted_reverted": ("==", 0),
    "powercut.floor_raised_by_damage": ("==", 0),
}

_VERIFY = """
import time, gc
from cgboot import image
import boot_trusted
keys = image.trusted(boot_trusted.KEYS)
with open(%r, 'rb') as f:
    buf = f.read()
image.verify(buf, keys)  # first call builds the base-point table (kept for the process)
times = []
for _ in range(%d):
    gc.collect()
    t = time.ticks_us()
    image.verify(buf, keys)
    times.append(time.ticks_diff(time.ticks_us(), t))
print(' '.join(str(t) for t in times))
"""

_DECISION = """
import time, os
from cgboot import image, loader
import boot_trusted
keys = image.trusted(boot_trusted.KEYS)
t = time.ticks_us()
r = loader.boot(%r, keys, None, '/app', log=lambda m: None)
import appmain
dt = time.ticks_diff(time.ticks_us(), t)
assert r is not None and appmain.VERSION == '1.3.0'
print(dt)
"""

# Heap needed by one verification: the smallest -X heapsize that still verifies, less what is
# live just before the call (modules compiled from source, keys, the image buffer).
_HEAP = """
import gc
from cgboot import image, ed25519, sha512
import boot_trusted
keys = image.trusted(boot_trusted.KEYS)
with open(%r, 'rb') as f:
    buf = f.read()
gc.collect()
print(gc.mem_alloc())
image.verify(buf, keys)
print('ok')
"""


def _mp_times(kit, name: str) -> float:
    out = run_micropython(_VERIFY % (str(kit.images[name]), RUNS), extra_paths=(kit.lib,), heapsize="512K")
    return statistics.median(int(x) for x in out.split()) / 1000


def _cryptography_ms(kit) -> float:
    # The same work with `cryptography` and hashlib: SHA-256 over the image's bytes, then the
    # Ed25519 signature over that 32-byte digest (what imgtool signs), timed together.
    _, raw = image_tool.public_key(kit.keys["ed_a"])
    pub = ed25519.Ed25519PublicKey.from_public_bytes(raw)
    priv = serialization.load_pem_private_key(kit.keys["ed_a"].read_bytes(), None)
    data = kit.images["v1"].read_bytes()
    sig = priv.sign(hashlib.sha256(data).digest())
    times = []
    for _ in range(200):
        t = time.perf_counter()
        pub.verify(sig, hashlib.sha256(data).digest())
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def _heap_needed(kit, name: str) -> int:
    script = _HEAP % str(kit.images[name])

    def fits(kib: int):
        proc = subprocess.run(
            [*micropython_cmd(f"{kib}K"), "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            env=micropython_env((kit.lib,)),
        )
        lines = proc.stdout.split()
        base = int(lines[0]) if lines and lines[0].isdigit() else None  # None: failed before the call
        return (proc.returncode == 0 and lines[-1:] == ["ok"]), base

    lo, hi = 40, 256  # KiB: lo fails (modules alone need more), hi fits
    base = None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        ok, b = fits(mid)
        if ok:
            hi, base = mid, b
        else:
            lo = mid
    if base is None:
        ok, base = fits(hi)
        if not ok:
            raise RuntimeFailed("verification did not fit in 256K")
    return hi * 1024 - base


_SWEEP = """
dev = bootsim.new_device(keys, imgs)
total = bootsim.run_scenario(dev, bootsim.upgrade_then_bad_plan)[0]
dev.unmount()
r = bootsim.sweep(keys, imgs, range(total), %s)
print(json.dumps(r))
"""


def _powercut(kit) -> dict:
    totals = {"points": 0, "bricked": 0, "unverified": 0, "inconsistent": 0, "wrong_end": 0}
    for torn in (False, True):
        script = device_script(kit, ("v1", "v2", "v3"), _SWEEP % torn)
        r = json.loads(
            run_micropython(script, heapsize="4M", extra_paths=(kit.lib,), timeout=900).split("\n")[-2]
        )
        for k in totals:
            totals[k] += r[k]
    return totals


_RETENTION = """
print(json.dumps(bootsim.retention_sweep(keys, imgs, %d, %d)))
"""
RETENTION_STRIDES = (7, 1)  # every 7th byte of a slot file (every bit position in turn), every byte of the state files


def _retention(kit) -> dict:
    script = device_script(kit, ("v1", "v2", "v3"), _RETENTION % RETENTION_STRIDES)
    out = run_micropython(script, heapsize="4M", extra_paths=(kit.lib,), timeout=3600)
    return json.loads(out.strip().splitlines()[-1])


def run() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        kit = make_kit(Path(tmp), only=("v1", "v2", "v3", "v2_ec", "big64k"))
        ed_ms = _mp_times(kit, "v1")
        ec_ms = _mp_times(kit, "v2_ec")
        ref_ms = _cryptography_ms(kit)
        fs = Path(tmp) / "fs"
        (fs / "slots").mkdir(parents=True)
        (fs / "slots" / "a.img").write_bytes(kit.images["big64k"].read_bytes())
        decision = [
            int(run_micropython(_DECISION % str(fs), extra_paths=(kit.lib,), heapsize="256K")) / 1000
            for _ in range(3)
        ]
        heap = _heap_needed(kit, "v1")
        cuts = _powercut(kit)
        kept = _retention(kit)
    return {
        "boot.verify_ms.ed25519.mp": round(ed_ms, 2),
        "boot.verify_ms.ecdsa_p256.mp": round(ec_ms, 2),
        "boot.verify_ms.ed25519.cryptography": round(ref_ms, 4),
        "boot.verify_ratio_vs_cryptography": round(ed_ms / ref_ms, 1),
        "boot.decision_ms_64k.mp": round(statistics.median(decision), 2),
        "boot.verify_peak_heap_bytes": heap,
        "powercut.points": cuts["points"],
        "powercut.bricked": cuts["bricked"],
        "powercut.unverified_boots": cuts["unverified"],
        "powercut.inconsistent_states": cuts["inconsistent"] + cuts["wrong_end"],
        "powercut.retention_points": kept["points"],
        "powercut.adopted_reverted": kept["adopted_reverted"],
        "powercut.floor_raised_by_damage": kept["floor_raised_by_damage"],
        "powercut.retention_bricked": kept["bricked"] + kept["unverified"],
        "powercut.retention_wrong_end": kept["inconsistent"] + kept["wrong_end"] + kept["floor_lost"],
    }
