# CircuitPython's boot-time and persistence services: what MicroPython does not need.
#
# CircuitPython mounts its flash (CIRCUITPY) read-only to code and read-write to a USB host; code can
# write only after boot.py calls storage.remount("/", readonly=False), which in turn makes the drive
# read-only to the host. cellguard keeps its state in files under runtime.fs_root() on both runtimes,
# so a CircuitPython board's boot.py calls prepare_storage(). For a few bytes that must survive even
# a read-only filesystem (a counter reservation, a tamper latch) NvmCell keeps a record in
# microcontroller.nvm, power-cut safe. Nothing here is imported on MicroPython.
import struct

from cellguard import runtime


class StorageNotWritable(OSError):
    """The filesystem is read-only to code: boot.py has not called prepare_storage()."""


def prepare_storage(disable_usb_drive=False):
    """Call from boot.py (CircuitPython allows remount only there): make "/" writable by code.

    disable_usb_drive: a shipped device also hides CIRCUITPY from USB hosts, so nobody can copy the
    firmware or its state off it (storage.disable_usb_drive(), also boot.py only).
    """
    import storage

    storage.remount("/", readonly=False)
    if disable_usb_drive:
        storage.disable_usb_drive()


def prepare_usb(shipped):
    """Call from boot.py (usb_cdc and autoreload are boot-time settings on CircuitPython).

    A shipped device hands out no REPL: the USB console CDC is off and a data-only CDC
    (usb_cdc.data) carries the technician's status protocol instead; code changes from USB do not
    reload it. A development board keeps CircuitPython's defaults.
    """
    if not shipped:
        return
    import supervisor
    import usb_cdc

    usb_cdc.enable(console=False, data=True)
    supervisor.runtime.autoreload = False


def status_port():
    """The technician's serial stream on a shipped CircuitPython device (usb_cdc.data), with the
    runtime's stream calls (write, readinto, wait_readable, close); None when it is not enabled."""
    import usb_cdc

    if usb_cdc.data is None:
        return None
    usb_cdc.data.write_timeout = 0  # a write takes what the host's buffer holds, never waits for it
    return runtime.BusioUartStream(usb_cdc.data)


def check_writable():
    """Raise StorageNotWritable with the fix when code cannot write the filesystem."""
    import storage

    if storage.getmount("/").readonly:
        raise StorageNotWritable("CIRCUITPY is read-only to code: boot.py must call cpy_boot.prepare_storage()")


class NvmCell:
    """One small record in microcontroller.nvm, kept in two copies so a power cut never loses it.

    Each copy: generation u32, length u16, payload, first 4 bytes of SHA-256(gen|len|payload).
    A write goes to the copy with the older generation; read() returns the newest copy that checks.
    """

    _HDR = ">IH"  # generation, payload length

    def __init__(self, nvm, offset, capacity):
        self._nvm = nvm
        self._capacity = capacity
        self._slot = 6 + capacity + 4
        self._offsets = (offset, offset + self._slot)
        if offset + 2 * self._slot > len(nvm):
            raise ValueError("NvmCell does not fit in nvm")

    def _load(self, off):
        raw = bytes(self._nvm[off : off + self._slot])
        gen, n = struct.unpack_from(self._HDR, raw)
        if n > self._capacity:
            return None
        body = raw[: 6 + n]
        if runtime.sha256(body).digest()[:4] != raw[6 + self._capacity : 6 + self._capacity + 4]:
            return None
        return gen, raw[6 : 6 + n]

    def _best(self):
        best = None
        for i, off in enumerate(self._offsets):
            rec = self._load(off)
            if rec is not None and (best is None or rec[0] > best[1]):
                best = (i, rec[0], rec[1])
        return best

    def read(self):
        best = self._best()
        return None if best is None else best[2]

    def write(self, payload):
        if len(payload) > self._capacity:
            raise ValueError("payload larger than the cell")
        best = self._best()
        gen = 1 if best is None else best[1] + 1
        target = self._offsets[0] if best is None else self._offsets[1 - best[0]]
        rec = bytearray(self._slot)
        struct.pack_into(self._HDR, rec, 0, gen, len(payload))
        rec[6 : 6 + len(payload)] = payload
        rec[6 + self._capacity :] = runtime.sha256(bytes(rec[: 6 + len(payload)])).digest()[:4]
        self._nvm[target : target + self._slot] = rec


# ---- the manifest check's result, from boot.py to the status page ---------------------------------
# CircuitPython restarts the VM between boot.py and main.py, so cgboot.manifest.RESULT is gone by
# the time the application runs: boot.py saves it here (code can write only after boot.py's remount,
# and the drive is read-only to USB from then on), main.py's describe step publishes it.
MANIFEST_STATE = "state/manifest.json"


def save_manifest_result():
    """boot.py, after prepare_storage(): write what the manifest check decided (or nothing)."""
    import json
    import sys

    m = sys.modules.get("cgboot.manifest")
    result = getattr(m, "RESULT", None)
    path = runtime.path_join(runtime.fs_root(), MANIFEST_STATE)
    import os

    try:
        try:
            os.mkdir(runtime.path_join(runtime.fs_root(), "state"))
        except OSError:
            pass  # already there
        with open(path, "w") as f:
            json.dump(list(result) if result else None, f)
    except OSError as e:  # the page then says "unknown"; the boot itself is not affected
        print("boot: could not record the manifest result:", repr(e))


def manifest_result():
    """("verified", version, count), ("unverified", reason), or None: this boot's, if in memory,
    else what boot.py saved."""
    import json
    import sys

    m = sys.modules.get("cgboot.manifest")
    if getattr(m, "RESULT", None):
        return tuple(m.RESULT)
    try:
        with open(runtime.path_join(runtime.fs_root(), MANIFEST_STATE)) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    return tuple(saved) if isinstance(saved, list) and saved else None


def publish_manifest_result(status):
    """The status page's boot section on CircuitPython: slot `manifest` and what its check said."""
    r = manifest_result()
    status.set("boot", "slot", "manifest")
    if r is None:
        status.set("boot", "state", "unknown (boot.py recorded no manifest check)")
    elif r[0] == "verified" and len(r) == 3:
        status.set("firmware", "image_version", r[1])
        status.set("boot", "state", "verified (manifest v%s, %d files)" % (r[1], r[2]))
    else:
        status.set("boot", "state", "unverified (%s; development fallback to /lib)" % (r[-1],))


# The file check itself lives in the boot part (cgboot.manifest), which boot.py runs before anything
# imports cellguard; here for the application's own use (one copy of the code).
from cgboot.manifest import ImageMismatch, verify_files  # noqa: E402, F401
