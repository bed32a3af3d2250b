# A simulated device for the boot part's tests (runs on the MicroPython unix port): littlefs on a
# FlashSim, the loader in firmware/boot.py's place, an "application" that is whatever the booted
# image says it is (appmain.VERSION / HEALTHY), and a hub that pushes updates in chunks.
#
# One power_on() is one boot of the device: mount, boot, run the app, maybe download an update,
# then return how the run ended. Every boot is checked: something verified must run, and what runs
# must be byte-for-byte one of the images the test signed.
import gc
import hashlib
import sys

import vfs
from cgboot import image, loader, slots, update
from flashsim import FlashSim, PowerCut

FS = "/fl"
APP = "/app"
CHUNK = 512


class Device:
    def __init__(self, keys, images, block_count=96, max_attempts=2):
        self.keys = keys
        self.images = images  # name -> bytes of the signed images the hub may send
        self.known = {}  # SHA-256 TLV digest -> image name: every image the test signed
        for name in images:
            try:
                self.known[image.verify(images[name], keys).digest] = name
            except image.Rejected:
                pass  # an image the test expects the device to refuse
        self.flash = FlashSim(block_count, 512)
        self.max_attempts = max_attempts
        self.boots = []  # (image name, trial) per boot
        self.bricked = 0
        self.unverified = 0
        self.inconsistent = 0
        self.resumed = []  # non-zero offsets an interrupted download resumed from
        vfs.VfsLfs2.mkfs(self.flash)

    # -- factory --------------------------------------------------------------------------------
    def provision(self, name):
        self.mount()
        s = slots.Slots(FS, self.keys, max_attempts=self.max_attempts)
        s.ensure_dirs()
        with open(s.slot_path(0), "wb") as f:
            f.write(self.images[name])
        self.unmount()

    # -- power ----------------------------------------------------------------------------------
    def mount(self):
        vfs.mount(vfs.VfsLfs2(self.flash), FS)

    def unmount(self):
        try:
            vfs.umount(FS)
        except OSError:
            pass
        try:
            vfs.umount(APP)
        except OSError:
            pass

    def reboot(self):
        self.unmount()
        self.flash = self.flash.reboot()

    def slots(self):
        return slots.Slots(FS, self.keys, max_attempts=self.max_attempts)

    # -- one boot -------------------------------------------------------------------------------
    def power_on(self, plan, reset_cause=None):
        """Boot and run once. plan(version, state) -> image name to download next, or None.
        Returns 'done' (nothing left to do), 'reset' (the app or an update asked for a reboot) or
        'bricked'."""
        self.mount()
        result = loader.boot(
            FS, self.keys, reset_cause, APP, log=lambda m: None, max_attempts=self.max_attempts
        )
        if result is None:
            self.bricked += 1
            return "bricked"
        if not self.matches_state(result):
            self.inconsistent += 1
        name = self.known.get(result.info.digest)
        if name is None or bytes(result.buf) != self.images[name]:
            self.unverified += 1
        sys.modules.pop("appmain", None)
        import appmain  # from the ROMFS mounted out of the verified buffer

        if appmain.VERSION != result.info.version_str().split("+")[0]:
            self.unverified += 1
        self.boots.append((name, result.trial))
        if result.trial:
            if not appmain.HEALTHY:
                return "reset"  # a bad image never confirms; the watchdog resets the board
            loader.confirm()
        s = self.slots()
        target = plan(appmain.VERSION, s.read_state())
        if target is None:
            return "done"
        self.download(s, self.images[target])
        return "reset"

    def matches_state(self, result):
        """What booted is what the stored state says: a trial exactly when the state is testing,
        from the candidate slot then, from the active slot otherwise."""
        st = self.slots().read_state()
        if st is None:
            return False
        if result.trial != (st.mode == slots.TESTING):
            return False
        return result.slot == (st.candidate if result.trial else st.active)

    def download(self, s, data):
        w = update.UpdateWriter(s)
        off = w.offer(len(data), hashlib.sha256(data).digest())
        if off:
            self.resumed.append(off)
        while off < len(data):
            off = w.write(off, data[off : off + CHUNK])
        w.finish()

    def check_state(self):
        """The state is readable and the active slot holds a verified image (a bootable device)."""
        self.mount()
        s = self.slots()
        st = s.read_state()
        ok = st is not None
        if ok:
            try:
                s.verify_slot(st.active, st.floor)
            except image.Rejected:
                ok = False
        self.unmount()
        return ok, st


def upgrade_then_bad_plan(version, st):
    # The hub's plan for the sweep: v1 -> v2 (good, confirmed) -> v3 (bad, must revert).
    if version == "1.0.0":
        return "v2"
    if version == "1.1.0" and st.mode != slots.REVERTED:
        return "v3"
    return None


def run_scenario(dev, plan, cut_at=-1, torn=False, max_boots=16):
    # (check_state after a cut is itself followed by a reboot, so every boot starts from power-on)
    """Run boots until 'done', with one power cut before flash op `cut_at` of the whole scenario.
    Returns (ops used, cut happened)."""
    used = 0
    cut = False
    dev.flash.arm(cut_at, torn)
    for _ in range(max_boots):
        try:
            outcome = dev.power_on(plan)
        except PowerCut:
            outcome = "cut"
            cut = True
        used += dev.flash.ops
        dev.reboot()
        if outcome == "cut":
            ok, _ = dev.check_state()
            if not ok:
                dev.inconsistent += 1
            dev.reboot()
        elif not cut and cut_at >= 0:
            dev.flash.arm(cut_at - used, torn)
        if outcome == "done" or outcome == "bricked":
            return used, cut, outcome
    return used, cut, "loop"


def new_device(keys, images, first="v1", **kw):
    """A device provisioned at the factory with `first` in slot a, booted once (not under test)."""
    dev = Device(keys, images, **kw)
    dev.provision(first)
    dev.power_on(lambda version, st: None)
    dev.reboot()
    return dev


def sweep(keys, images, points, torn):
    """Cut power before each flash op in `points` of the upgrade-then-bad-update scenario.
    Returns a dict of counters; every one except points/resumed must be 0."""
    expect_counter = image.verify(images["v2"], keys).security_counter
    out = {"points": 0, "bricked": 0, "unverified": 0, "inconsistent": 0, "wrong_end": 0, "resumed": 0}
    for n in points:
        gc.collect()  # retired flash copies from the last point
        dev = new_device(keys, images)
        _, cut, outcome = run_scenario(dev, upgrade_then_bad_plan, n, torn)
        ok, st = dev.check_state()
        out["points"] += 1
        out["bricked"] += dev.bricked + (outcome == "bricked")
        out["unverified"] += dev.unverified
        out["inconsistent"] += dev.inconsistent + (not ok)
        if (
            outcome != "done"
            or st.mode != slots.REVERTED
            or st.floor != expect_counter
            or dev.boots[-1] != ("v2", False)
        ):
            out["wrong_end"] += 1
        out["resumed"] += len(dev.resumed)
        dev.unmount()
    return out


# -- flash that decays between power cuts (docs/boot.md, "Power-loss proof") -----------------------
# After a whole update-and-revert life (v1 -> v2 confirmed -> v3 reverted) one fault is put into a
# copy of the flash, and the unit boots a few times. Kinds: a retention flip (one bit) in a slot
# file, in either state record or both, or in the failure journal; a weak cell in a slot file
# (reads back at random); a bad spot under a slot file (EIO once, or on every read). A bad spot is
# never put in the first 128 bytes of a block, where littlefs keeps a file's skip-list pointers
# (every allocation reads them: an error there fails the filesystem, not one slot file).
RETENTION_BOOTS = 3
_LIFE_END = {"slots/a.img": "v3", "slots/b.img": "v2"}  # where the life leaves each image


def _file(dev, rel):
    dev.mount()
    try:
        with open(FS + "/" + rel, "rb") as f:
            return f.read()
    finally:
        dev.unmount()


def locate(dev, rel, pos):
    """The flash offset that holds byte `pos` of file `rel` now. A window of the file around it (one
    that does not cross into the next block's pointers) is searched for in the raw flash; a stale
    copy of the same bytes (littlefs copies on write) is told apart by flipping the candidate and
    reading the file again."""
    data = _file(dev, rel)
    raw = bytes(dev.flash.data)
    for lo in (pos - 6, pos, pos - 11):
        lo = max(0, min(lo, len(data) - 12))
        at = raw.find(data[lo : lo + 12])
        while at >= 0:
            off = at + pos - lo
            dev.flash.flip(off)
            changed = _file(dev, rel)[pos] != data[pos]
            dev.flash.flip(off)
            if changed:
                return off
            at = raw.find(data[lo : lo + 12], at + 1)
    raise RuntimeError("%s byte %d not found on the flash" % (rel, pos))


def retention_plan(dev, stride_slot, stride_state):
    """[(kind, files, pos)] of the sweep over the life's end state in `dev`."""
    plan = []
    sizes = {}
    for rel in ("slots/a.img", "slots/b.img", "state/boot.0", "state/boot.1", "state/failed"):
        try:
            sizes[rel] = len(_file(dev, rel))
        except OSError:
            sizes[rel] = 0  # (a boot part without a failure journal)
    for rel in ("slots/a.img", "slots/b.img"):
        plan += [("flip", (rel,), p) for p in range(0, sizes[rel], stride_slot)]
    for files in (("state/boot.0",), ("state/boot.1",), ("state/boot.0", "state/boot.1"), ("state/failed",)):
        plan += [("flip", files, p) for p in range(0, sizes[files[0]], stride_state)]
    rel = "slots/b.img"  # the confirmed image: what a weak or a bad block can take away
    plan += [("weak", (rel,), p) for p in range(0, sizes[rel], stride_slot)]
    for kind in ("eio", "eio_once"):
        plan += [(kind, (rel,), p) for p in range(0, sizes[rel], stride_slot)]
    return plan


def _fault(dev, kind, files, pos):
    # Put the fault in; False if there is no such point (a bad spot among skip-list pointers).
    for rel in files:
        off = locate(dev, rel, pos)
        if kind == "flip":
            dev.flash.flip(off, 1 << (pos % 8))
        elif kind == "weak":
            dev.flash.weak[off] = 1 << (pos % 8)
        elif off % dev.flash.block_size < 128:
            return False
        else:
            dev.flash.bad[off] = 1 if kind == "eio_once" else -1
    return True


def retention_sweep(keys, images, stride_slot, stride_state):
    """Every fault of retention_plan, each on a copy of the flash at the end of the life, then
    RETENTION_BOOTS boots. Returns counters: all but `points` must be 0."""
    v1 = image.verify(images["v1"], keys).security_counter
    v2 = image.verify(images["v2"], keys).security_counter
    dev = new_device(keys, images)
    run_scenario(dev, upgrade_then_bad_plan)
    base = bytes(dev.flash.data)
    plan = retention_plan(dev, stride_slot, stride_state)
    out = {"points": 0, "bricked": 0, "unverified": 0, "inconsistent": 0, "adopted_reverted": 0,
           "floor_raised_by_damage": 0, "floor_lost": 0, "wrong_end": 0, "examples": []}
    for kind, files, pos in plan:
        before = sum(out[k] for k in out if k not in ("points", "examples"))
        gc.collect()
        dev.flash = FlashSim(dev.flash.block_count, dev.flash.block_size, bytearray(base))
        dev.boots = []
        dev.bricked = dev.unverified = dev.inconsistent = 0
        if not _fault(dev, kind, files, pos):
            continue
        for _ in range(RETENTION_BOOTS):
            try:
                outcome = dev.power_on(lambda version, st: None)
            except OSError:  # the boot part failed: boot.py would hold a locked unit in lockdown
                outcome = "bricked"
                dev.bricked += 1
            st = dev.slots().read_state() if outcome != "bricked" else None
            dev.reboot()
            if st is None:
                continue
            if dev.boots[-1] == ("v3", False) and st.mode != getattr(slots, "RESCUE", -1):
                out["adopted_reverted"] += 1  # the image that failed its trial, run as the confirmed one
            if st.floor > v2:
                out["floor_raised_by_damage"] += 1
        out["points"] += 1
        out["bricked"] += dev.bricked
        out["unverified"] += dev.unverified
        out["inconsistent"] += dev.inconsistent
        # The end: v2 runs again unless the fault took it away for good; then v3 runs in rescue.
        v2_gone = kind in ("flip", "eio") and _LIFE_END.get(files[0]) == "v2"
        want = ("v3", False) if v2_gone else ("v2", False)
        if not dev.boots or dev.boots[-1] != want or (v2_gone and st.mode != getattr(slots, "RESCUE", -1)):
            out["wrong_end"] += 1
        # One damaged record: the other keeps the floor. Both: the provisioning floor, never higher.
        if st is not None and st.floor != (v1 if len(files) == 2 else v2):
            out["floor_lost"] += 1
        if sum(out[k] for k in out if k not in ("points", "examples")) != before and len(out["examples"]) < 5:
            out["examples"].append([kind, files, pos, dev.boots, st.describe() if st else None])
    return out
