"""RAM of an over-the-air update on the real MicroPython unix port: while the active image runs
(its verified bytes in RAM, mounted at /app), a whole new image is downloaded and verified in a heap
that holds the active image plus only a small margin. The candidate is verified streamed from its
slot file (cgboot.image.verify_file); reading it whole, as finish() once did, does not fit."""

import hashlib
import shutil

import pytest
from boot_kit import session_kit
from harness import FIRMWARE_LIB, run_micropython

# The active image (big64k, 65,850 bytes) plus this: the interpreter, the boot part (.mpy, loaded
# into the heap on the unix port; frozen on a board) and its verifier's working set, the download.
# Measured (docs/boot.md, "Memory"): booting alone needs the image + 68 KiB; the OTA with the streamed
# verify the image + 88 KiB; with the candidate read whole, the image + 152 KiB. The margin sits
# between the last two, with room on both sides (the heap's fragmentation moves the edges a little).
MARGIN_KIB = 112

_FIRST_BOOT = """
import sys
from cgboot import image, loader
import boot_trusted
assert loader.boot(sys.argv[1], image.trusted(boot_trusted.KEYS), None, None, log=lambda m: None)
"""

_OTA = """
import sys
from cgboot import image, loader, update
import boot_trusted
keys = image.trusted(boot_trusted.KEYS)
ROOT, SRC, SIZE, DIGEST, WHOLE = sys.argv[1], sys.argv[2], int(sys.argv[3]), bytes.fromhex(sys.argv[4]), sys.argv[5]
r = loader.boot(ROOT, keys, None, "/app", log=lambda m: None)
import appmain  # the active image runs: its buffer stays in RAM (the ROMFS mount points into it)
print("running", appmain.VERSION, len(r.buf))

if WHOLE == "1":  # finish() as it was: the candidate read whole into RAM, hashed and verified there
    def finish(self):
        import hashlib
        buf = self.slots.read_slot(self.slot)
        assert hashlib.sha256(buf).digest() == self.digest
        info = image.verify(buf, self.slots.keys, self.slots.read_state().floor, self.slots.slot_size)
        self.slots.mark_pending(self.slot)
        return info
    update.UpdateWriter.finish = finish

w = update.UpdateWriter(r.slots)
off = w.offer(SIZE, DIGEST)
with open(SRC, "rb") as f:  # the hub's image, chunk by chunk as the downlink delivers it
    while off < SIZE:
        f.seek(off)
        off = w.write(off, f.read(512))
try:
    info = w.finish()
    print("pending", info.version_str(), r.slots.read_state().mode)
except MemoryError:
    print("MemoryError")
"""


def boot_part(tmp_path):
    """The boot part compiled to .mpy, as a board holds it (not compiled on the heap at import)."""
    from cgdev import image as image_tool

    lib = tmp_path / "lib"
    if not lib.exists():
        shutil.copytree(FIRMWARE_LIB / "cgboot", lib / "cgboot", ignore=shutil.ignore_patterns("__pycache__"))
        image_tool.precompile(lib, "x64")
    return lib


def ota_in_heap(kit, tmp_path, heap: int, whole: bool) -> str:
    fs = tmp_path / ("whole" if whole else "streamed")
    shutil.rmtree(fs, ignore_errors=True)
    (fs / "slots").mkdir(parents=True)
    shutil.copy(kit.images["big64k"], fs / "slots" / "a.img")
    new = kit.images["big64k_next"]
    data = new.read_bytes()
    paths = (boot_part(tmp_path), kit.lib)
    # The factory's first boot (it adopts slot a) in a roomy heap: the unit under test has run before.
    run_micropython(_FIRST_BOOT, heapsize="1M", extra_paths=paths, args=(str(fs),), timeout=60)
    args = (str(fs), str(new), str(len(data)), hashlib.sha256(data).hexdigest(), "1" if whole else "0")
    return run_micropython(_OTA, heapsize=str(heap), extra_paths=paths, args=args, timeout=120)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return session_kit(tmp_path_factory)


@pytest.mark.timeout(300)
def test_ota_verify_fits_beside_the_running_image(kit, tmp_path):
    active = kit.images["big64k"].stat().st_size
    heap = active + MARGIN_KIB * 1024
    out = ota_in_heap(kit, tmp_path, heap, whole=False).split("\n")
    assert out[0] == "running 1.3.0 %d" % active, out
    assert out[1] == "pending 1.4.0+0 1", out  # verified and marked for its trial boot (PENDING)
    # The same heap, the same download, the candidate read whole as before: it does not fit.
    out = ota_in_heap(kit, tmp_path, heap, whole=True).split("\n")
    assert out[0] == "running 1.3.0 %d" % active and out[1] == "MemoryError", out
