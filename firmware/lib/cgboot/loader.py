# The boot decision: which slot runs, trial boots, automatic revert, and mounting what was verified.
#
# firmware/boot.py calls boot(). It reads the boot state, decides (docs/boot.md, "Boot decision"),
# persists the decision BEFORE the image runs (so a crash or watchdog reset during a trial is
# counted), verifies the chosen slot, and mounts the verified bytes themselves with vfs.VfsRom: the
# buffer that was hashed and signature-checked is the buffer the application is imported from.
# The application calls confirm() once it has proved itself healthy. On flash that decays (docs/boot.md,
# "Damaged flash") an image that failed its trial never runs as the confirmed one (rescue), and
# damaged state records never raise the anti-rollback floor.
import sys

from cgboot import image
from cgboot import slots as _slots

# Reset causes that mean "the trial image failed": revert at once instead of trying again.
FAILURE_RESETS = ("watchdog", "crash")
# Written just before a reset the firmware means (a hub REBOOT, an update's reboot): on some boards
# machine.reset() itself reads back as a watchdog reset (the RP2040 resets through its watchdog), so
# the next boot must not take it for a failed trial. Consumed (removed) by the next boot.
INTENT_FILE = "state/reset.intent"

_READS = 3  # reads of a slot that fails before it counts as broken (only on the failure path)
_current = None  # the BootResult of this boot, for confirm() / report_crash()
_messages = []  # (text, is_failure) said while booting, for the application's log (status `log`)
_MESSAGES_MAX = 8


class BootResult:
    def __init__(self, slots, slot, info, trial, buf, event=None):
        self.slots = slots
        self.slot = slot
        self.info = info  # image.ImageInfo of what runs
        self.trial = trial  # True: an unconfirmed image on trial; the app must confirm()
        self.buf = buf  # the verified bytes (kept alive: the ROMFS mount points into them)
        # What went wrong before this image could run, for the status page and the HELLO: None,
        # FALLBACK (the confirmed image broke), DAMAGED (both state records), RECOVERED (the image
        # confirmed before a rescue verifies again), RESCUE (only an image that failed its trial
        # verifies: it runs, never as the confirmed one).
        self.event = event

    def describe(self):
        return {
            "slot": _slots.SLOT_NAMES[self.slot],
            "version": self.info.version_str(),
            "security_counter": self.info.security_counter,
            "trial": self.trial,
            "digest": self.info.digest.hex(),
            "event": self.event,
        }


# BootResult.event and the reason a state record gives (16 bytes at most).
FALLBACK = "fallback"
DAMAGED = "state damaged"
RECOVERED = "recovered"
RESCUE = "rescue"


def _log(log, msg):
    if len(_messages) < _MESSAGES_MAX:
        _messages.append((msg, "reject" in msg or "revert" in msg or "broken" in msg or "damaged" in msg))
    if log is not None:
        log(msg)
    else:
        print("cgboot:", msg)


def messages():
    """What the loader reported at this boot, oldest first: [(text, is_failure)]."""
    return list(_messages)


def _try(slots_, slot, floor, log, tries=1):
    # (buffer, ImageInfo) of a slot that verifies in RAM, or (None, None).
    return _reading(slots_.verify_slot, slot, floor, log, tries) or (None, None)


def _check(slots_, slot, floor, log, tries=1):
    # ImageInfo of a slot that verifies, streamed from flash (no buffer kept); None if rejected.
    return _reading(slots_.check_slot, slot, floor, log, tries)


def _reading(verify, slot, floor, log, tries):
    # A slot that fails is read again `tries` - 1 times: a weak (half-programmed) cell or a read
    # error may give the right bytes the next time. Costs nothing on a slot that verifies.
    for _ in range(tries):
        try:
            return verify(slot, floor)
        except image.Rejected as e:
            _log(log, "slot %s rejected: %s" % (_slots.SLOT_NAMES[slot], e))
    return None


def _adopt(slots_, floor, failed, log):
    # No state record to go by: the verified slot with the highest counter that never failed a
    # trial; if only failed images verify, the best of those (to run in rescue). The slots are
    # compared streamed from flash; only the winner is read into RAM (and verified again there: the
    # bytes that run are the bytes verified). Returns (slot, buf, info) or None.
    ranked = []
    for slot in (0, 1):
        info = _check(slots_, slot, floor, log)
        if info is not None:
            ranked.append((info.digest in failed, -info.security_counter, slot))
    ranked.sort()
    _release_verifier()  # its tables sit amid the heap: the image's buffer needs one free block
    for _, _, slot in ranked:
        buf, info = _try(slots_, slot, floor, log)
        if info is not None:
            return slot, buf, info
    return None


def _first_boot(slots_, log):
    if slots_.fresh():
        # Factory-fresh: adopt the best verified slot as confirmed; its counter is the floor, and
        # the provision record (written once) says from now on that this unit had a state.
        found = _adopt(slots_, 0, (), log)
        if found is None:
            return None
        slot, buf, info = found
        slots_.write_state(_slots.BootState(active=slot, floor=info.security_counter, confirmed=info.digest))
        slots_.write_provision(info.security_counter)
        return BootResult(slots_, slot, info, False, buf)
    # Both records damaged (flash decay): the floor written at provisioning, never a higher one, and
    # never an image that failed its trial as the confirmed one.
    floor = slots_.provision_floor()
    failed = slots_.failed()
    _log(log, "boot state damaged: choosing again (floor %d, %d failed images known)" % (floor, len(failed)))
    found = _adopt(slots_, floor, failed, log)
    if found is None:
        return None
    slot, buf, info = found
    return _run(slots_, _slots.BootState(active=1 - slot, floor=floor), slot, buf, info, failed, log, DAMAGED)


def _run(slots_, st, slot, buf, info, failed, log, event=None):
    # `slot` (verified: buf, info) runs, not on trial, under state `st`. An image that failed its
    # trial never runs as the confirmed one: the state says RESCUE (and keeps `confirmed`, the digest
    # of the image last confirmed, so that image is taken back if it verifies again). `event`: the
    # image becomes the confirmed one for that reason (a fallback, a recovery, a damaged state).
    if info.digest in failed or (st.mode == _slots.RESCUE and slot == st.active):
        if st.mode != _slots.RESCUE or slot != st.active:
            _log(log, "only an image that failed its trial verifies: it runs in rescue, never confirmed")
            slots_.record_failure(info.digest)  # (again: the journal may be what was damaged)
            slots_.write_state(st.copy(active=slot, mode=_slots.RESCUE, attempts=0, digest=info.digest, reason=RESCUE))
        return BootResult(slots_, slot, info, False, buf, RESCUE)
    if event is not None:
        slots_.write_state(
            st.copy(active=slot, mode=_slots.CONFIRMED, attempts=0, digest=b"", reason=event, confirmed=info.digest)
        )
    return BootResult(slots_, slot, info, False, buf, event)


def decide(slots_, reset_cause=None, log=None):
    """Choose, persist and verify what boots; returns BootResult or None if nothing can boot."""
    st = slots_.read_state()
    if st is None:
        return _first_boot(slots_, log)
    if not slots_.provisioned():
        slots_.write_provision(st.floor)  # a unit whose state predates the provision record
    failed = slots_.failed(st)

    if st.mode == _slots.RESCUE:
        # The image last confirmed may read back again (a weak cell), or the hub may have sent a new
        # one: a verified, never-failed image in the other slot ends the rescue.
        info = _check(slots_, st.candidate, st.floor, log, _READS)
        if info is not None and info.digest not in failed:
            if info.digest == st.confirmed:
                buf, info = _try(slots_, st.candidate, st.floor, log, _READS)
                if info is not None:
                    _log(log, "the confirmed image verifies again: rescue over")
                    return _run(slots_, st, st.candidate, buf, info, failed, log, RECOVERED)
            else:  # never confirmed: it runs on trial, as an update would
                st = st.copy(mode=_slots.PENDING, attempts=0, digest=info.digest, reason="")

    if st.mode == _slots.PENDING or st.mode == _slots.TESTING:
        why = None
        if st.digest in failed:  # an older record (the newer one damaged) of a failed trial
            why = "failed before"
        elif st.mode == _slots.TESTING:
            if st.reason:  # the application reported its failure (report_crash) before resetting
                why = st.reason
            elif reset_cause in FAILURE_RESETS:
                why = reset_cause
            elif st.attempts >= slots_.max_attempts:
                why = "not confirmed"
        if why is None:
            # Count the attempt before running it: a reset mid-trial is then never lost.
            st = slots_.write_state(st.copy(mode=_slots.TESTING, attempts=st.attempts + 1))
            buf, info = _try(slots_, st.candidate, st.floor, log)
            if info is not None and info.digest == st.digest:
                _log(log, "trial boot of %s, attempt %d" % (info.version_str(), st.attempts))
                return BootResult(slots_, st.candidate, info, True, buf)
            why = _slots.INVALID_IMAGE
        _log(log, "reverting trial image: " + why)
        st = slots_.revert(st, why)
        failed = slots_.failed(st)

    buf, info = _try(slots_, st.active, st.floor, log, _READS)
    if info is not None:
        return _run(slots_, st, st.active, buf, info, failed, log)
    # The image in the active slot no longer verifies (flash decay, a read error): boot the other
    # slot if it is a verified image allowed by the floor, rather than nothing. Loud: this should
    # never happen. An image that failed its trial runs only in rescue (_run).
    buf, info = _try(slots_, st.candidate, st.floor, log)
    if info is None:
        return None
    _log(log, "active slot broken: falling back to slot %s" % _slots.SLOT_NAMES[st.candidate])
    return _run(slots_, st, st.candidate, buf, info, failed, log, FALLBACK)


def mount(result, mount_point="/app"):
    """Mount the verified image's ROMFS body at `mount_point` and put it first on sys.path."""
    import vfs

    try:
        vfs.umount(mount_point)
    except OSError:
        pass
    vfs.mount(vfs.VfsRom(result.info.body(result.buf)), mount_point)
    if mount_point in sys.path:
        sys.path.remove(mount_point)
    sys.path.insert(0, mount_point)


def _intent_path(root):
    return root + INTENT_FILE if root.endswith("/") else root + "/" + INTENT_FILE


def intend_reset(reason="reboot", root=None):
    """Record that the next reset is wanted, not a failure. Call it right before machine.reset()."""
    if root is None:
        root = _current.slots.root if _current is not None else default_root()
    _slots.Slots(root, ()).ensure_dirs()
    with open(_intent_path(root), "w") as f:
        f.write(reason[:16])


def _take_intent(root):
    # The intent record of the reset that started this boot (None if there is none); removed, so it
    # excuses exactly one reset. Only a file that exists is touched: a normal boot writes nothing.
    import os

    path = _intent_path(root)
    try:
        with open(path) as f:
            reason = f.read(16) or "reboot"
    except OSError:
        return None
    try:
        os.remove(path)
    except OSError:
        pass
    return reason


def boot(root, trusted_keys, reset_cause=None, mount_point="/app", log=None, **slot_options):
    """Decide, verify and mount. Returns the BootResult (also kept for confirm()) or None."""
    global _current
    del _messages[:]
    intended = _take_intent(root)
    if intended is not None and reset_cause in FAILURE_RESETS:
        _log(log, "reset cause %s was an intended reset (%s): not a failure" % (reset_cause, intended))
        reset_cause = "reset"
    slots_ = _slots.Slots(root, trusted_keys, **slot_options)
    result = decide(slots_, reset_cause, log)
    if result is not None and mount_point:
        try:
            mount(result, mount_point)
        except OSError as e:
            if not result.trial:
                raise
            # Signed but not a filesystem we can mount: a failed trial like any other.
            _log(log, "trial image does not mount (%r): reverting" % (e,))
            slots_.revert(slots_.read_state(), "mount failed")
            result = decide(slots_, None, log)
            if result is not None:
                mount(result, mount_point)
    _current = result
    _release_verifier()
    return result


def _release_verifier():
    # The signature code and its tables are needed again only to verify an update: give their RAM
    # to the application now (they are imported again, from flash, when an update is verified).
    import gc

    import cgboot

    for name in ("ed25519", "sha512", "p256"):
        sys.modules.pop("cgboot." + name, None)
        if name in cgboot.__dict__:
            delattr(cgboot, name)
    gc.collect()


def current():
    """This boot's BootResult (None when no slot was booted)."""
    return _current


def confirm():
    """The application's API: the image on trial is healthy, make it permanent. Idempotent."""
    if _current is None or not _current.trial:
        return False
    _current.slots.confirm(_current.info.security_counter)
    _current.trial = False
    return True


def report_crash(reason="crash"):
    """The application failed during a trial: revert at the next boot without further attempts.

    The failure is recorded in the trial's own record (its reason); the next boot's decision does
    the revert, so it is made, and logged, in one place. No confirm() is accepted after this."""
    if _current is None or not _current.trial:
        return False
    st = _current.slots.read_state()
    if st is not None and st.mode == _slots.TESTING:
        _current.slots.write_state(st.copy(reason=reason[:16] or "crash"))
    _current.trial = False
    return True


def default_root():
    from cgboot import host

    return host.fs_root()


def _reset_cause():
    try:
        import machine

        cause = machine.reset_cause()
        if cause == getattr(machine, "WDT_RESET", -1):
            return "watchdog"
        return "reset"
    except (ImportError, AttributeError):
        return None


def _profile_slot_size(root):
    # The board profile (board.json, written by tools/flash.py) names the slot size; the loader reads
    # only that one number, with the same small JSON reader the application uses.
    import json

    try:
        with open(root + "board.json" if root.endswith("/") else root + "/board.json") as f:
            size = json.load(f).get("slot_size")
    except (OSError, ValueError, AttributeError):
        return _slots.DEFAULT_SLOT_SIZE
    if isinstance(size, int) and size > 0:
        return size
    return _slots.DEFAULT_SLOT_SIZE


def boot_device(mount_point="/app"):
    """What firmware/boot.py runs: the built-in trusted keys, the device's root and reset cause,
    and the slot size of the board profile."""
    from cgboot import trusted_keys

    root = default_root()
    result = boot(
        root, image.trusted(trusted_keys.KEYS), _reset_cause(), mount_point, slot_size=_profile_slot_size(root)
    )
    if result is None:
        print("cgboot: NO VERIFIED IMAGE IN EITHER SLOT - nothing signed will run")
    else:
        print(
            "cgboot: booted slot %s version %s%s"
            % (_slots.SLOT_NAMES[result.slot], result.info.version_str(), " (trial)" if result.trial else "")
        )
    return result
