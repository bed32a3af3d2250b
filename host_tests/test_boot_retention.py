"""The boot part on flash that decays between power cuts (MicroPython unix port, littlefs on the
simulated flash): after a whole life (v1 -> v2 confirmed in slot b -> v3 trialled and reverted, left
in slot a) one bit of a slot file or of the state records changes, a cell reads back at random, or a
read fails (EIO). The image that failed its trial never becomes the confirmed one, damage never
raises the anti-rollback floor, and a unit whose records are damaged is not taken for a fresh one."""

import json

import pytest
from boot_kit import device_script, session_kit
from harness import run_micropython

V1_COUNTER = 1 << 24  # security counters from the versions: 1.0.0, 1.1.0, 1.2.0
V2_COUNTER = (1 << 24) | (1 << 16)
V3_COUNTER = (1 << 24) | (2 << 16)

_LIFE = """
from cgboot import loader, slots, update
dev = bootsim.new_device(keys, imgs)
bootsim.run_scenario(dev, bootsim.upgrade_then_bad_plan)   # v2 confirmed (slot b), v3 reverted (slot a)
boots = len(dev.boots)

def boot(plan=lambda v, st: None):
    dev.power_on(plan)
    r = loader.current()
    dev.reboot()
    return getattr(r, "event", None) if r is not None else "bricked"

def offer(name):
    # the hub offers `name`: what the device's update writer says
    dev.mount()
    try:
        dev.download(dev.slots(), imgs[name])
        return "accepted"
    except Exception as e:
        return getattr(e, "reason", repr(e))
    finally:
        dev.unmount()

def report(**extra):
    ok, st = dev.check_state()
    dev.reboot()
    extra.update({"boots": dev.boots[boots:], "state": st.describe() if st else None})
    print(json.dumps(extra))
"""


@pytest.fixture(scope="session")
def kit(tmp_path_factory):
    return session_kit(tmp_path_factory)


def run(kit, body: str, names=("v1", "v2", "v3", "v2_ec")) -> dict:
    out = run_micropython(device_script(kit, names, _LIFE + body), heapsize="4M", extra_paths=(kit.lib,))
    return json.loads(out.strip().splitlines()[-1])


def test_a_flipped_bit_in_the_confirmed_slot_never_adopts_the_reverted_image(kit):
    # Issue 1: v2's slot decays; v3, the image that failed its trial, is all that verifies. It runs
    # in rescue (so the unit reaches the hub), is never the confirmed image, and an update ends it.
    result = run(
        kit,
        """
dev.flash.flip(bootsim.locate(dev, "slots/b.img", 100), 4)
events = [boot(), boot()]
ok, st = dev.check_state(); dev.reboot()
mode = st.describe()["mode"]
again = offer("v3")                      # the hub offers the failed image again: refused
fixed = offer("v2_ec")                   # a fixed image: written into the broken slot, on trial
events += [boot(), boot()]
report(events=events, mode=mode, again=again, fixed=fixed)
""",
    )
    assert result["boots"][:2] == [["v3", False], ["v3", False]]
    assert result["mode"] == "rescue"  # not "confirmed" (reason fallback), as it was adopted before
    assert result["events"][:2] == ["rescue", "rescue"]
    assert result["again"] == "reverted_before" and result["fixed"] == "accepted"
    assert result["boots"][2:] == [["v2_ec", True], ["v2_ec", False]]  # on trial, confirmed
    assert result["state"]["mode"] == "confirmed" and result["state"]["floor"] == V2_COUNTER


def test_a_rescue_ends_when_the_confirmed_image_reads_back(kit):
    # A weak cell in v2's slot: one boot it fails (v3 in rescue), a later one it reads right; the
    # image last confirmed is taken back without a trial, and the floor never moved.
    result = run(
        kit,
        """
off = bootsim.locate(dev, "slots/b.img", 700)
dev.flash.flip(off, 2)
events = [boot()]
dev.flash.flip(off, 2)                   # the cell reads right again
events += [boot(), boot()]
report(events=events)
""",
    )
    assert result["boots"] == [["v3", False], ["v2", False], ["v2", False]]
    assert result["events"] == ["rescue", "recovered", None]  # (what this boot did)
    assert result["state"]["mode"] == "confirmed" and result["state"]["active"] == "b"
    assert result["state"]["floor"] == V2_COUNTER


def test_both_state_records_damaged_is_not_factory_fresh(kit):
    # Issue 2: one bit in each record. A fresh unit would adopt the highest counter (v3) and raise the
    # floor to it; a provisioned one chooses again without the failed image, with its factory floor.
    result = run(
        kit,
        """
for rel in ("state/boot.0", "state/boot.1"):
    dev.flash.flip(bootsim.locate(dev, rel, 40), 1)
events = [boot(), boot()]
report(events=events, again=offer("v3"))
""",
    )
    assert result["boots"] == [["v2", False], ["v2", False]]
    assert result["events"] == ["state damaged", None]
    state = result["state"]
    assert state["mode"] == "confirmed" and state["reason"] == "state damaged" and state["active"] == "b"
    assert state["floor"] == V1_COUNTER  # the provisioning floor: never raised by damage
    assert result["again"] == "reverted_before"  # the failure journal survived the records


@pytest.mark.parametrize("records", [2, 1], ids=["two-records", "one-record"])
def test_what_the_second_record_buys_a_flipped_record_keeps_the_floor(kit, records):
    # The two alternating records: when the newest decays, the one before it still holds v2's floor.
    # With one record (the other removed, as a single state file would be) only the provisioning
    # floor is left: v1 could then be installed again.
    result = run(
        kit,
        """
import os
seqs = [slots.BootState.unpack(bootsim._file(dev, "state/boot.%%d" %% i)).seq for i in (0, 1)]
newest = seqs.index(max(seqs))
if %d == 1:
    dev.mount(); os.remove(bootsim.FS + "/state/boot.%%d" %% (1 - newest)); dev.unmount()
dev.flash.flip(bootsim.locate(dev, "state/boot.%%d" %% newest, 20), 8)
report(events=[boot()])
"""
        % records,
    )
    assert result["boots"] == [["v2", False]]
    if records == 2:
        assert result["events"] == [None] and result["state"]["floor"] == V2_COUNTER
        assert result["state"]["mode"] == "reverted"
    else:
        assert result["events"] == ["state damaged"] and result["state"]["floor"] == V1_COUNTER


def test_a_read_error_in_the_confirmed_slot_is_no_failed_boot(kit):
    # EIO once (a transient read error) is read again; EIO for ever is a rejected slot, never an
    # exception out of the boot decision (boot.py would hold a locked unit in lockdown).
    result = run(
        kit,
        """
off = bootsim.locate(dev, "slots/b.img", 300)
dev.flash.bad[off] = 1
events = [boot()]
dev.flash.bad[off] = -1
events += [boot()]
report(events=events)
""",
    )
    assert result["boots"] == [["v2", False], ["v3", False]]
    assert result["events"] == [None, "rescue"]
    assert result["state"]["mode"] == "rescue" and result["state"]["floor"] == V2_COUNTER


def test_an_update_whose_slot_decayed_before_its_trial_may_be_sent_again(kit):
    # The candidate's slot no longer verifies at its trial (reverted: invalid image): that says
    # nothing of the image, so it is not journaled as failed and the hub may send it again.
    result = run(
        kit,
        """
first = offer("v2_ec")
dev.flash.flip(bootsim.locate(dev, "slots/a.img", 500), 16)
events = [boot()]
ok, st = dev.check_state(); dev.reboot()
reason = st.reason
again = offer("v2_ec")
events += [boot()]
report(events=events, first=first, reason=reason, again=again)
""",
    )
    assert result["first"] == "accepted" and result["reason"] == "invalid image"
    assert result["again"] == "accepted"
    assert result["boots"] == [["v2", False], ["v2_ec", True]]


def test_a_failed_trial_begun_in_rescue_goes_back_to_rescue(kit):
    # In rescue the hub sends an update; it never confirms. It is reverted as any trial, and the
    # failed image that was running runs in rescue again (never as the confirmed one).
    result = run(
        kit,
        """
dev.flash.flip(bootsim.locate(dev, "slots/b.img", 100), 4)
events = [boot(lambda v, st: "v2_ec")]   # rescue; the update is downloaded into the broken slot
loader.confirm = lambda: False           # this update never proves itself healthy
events += [boot(), boot(), boot()]
report(events=events, again=offer("v2_ec"))
""",
    )
    assert result["boots"] == [["v3", False], ["v2_ec", True], ["v2_ec", True], ["v3", False]]
    assert result["events"] == ["rescue", None, None, "rescue"]
    assert result["state"]["mode"] == "rescue" and result["state"]["floor"] == V2_COUNTER
    assert result["again"] == "reverted_before"


def test_a_record_from_before_the_confirmed_digest_is_still_read(tmp_path):
    # A unit whose boot part is re-flashed keeps its records: the 96-byte record of the previous
    # format reads as one without `confirmed`, not as damage (which would choose again).
    import hashlib
    import struct

    from cgboot import slots

    body = struct.pack("<4sIBBBBI32s16s", b"CGBS", 7, 1, slots.REVERTED, 0, 0, V2_COUNTER, b"d" * 32, b"deadline")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "boot.1").write_bytes(body + hashlib.sha256(body).digest())
    st = slots.Slots(str(tmp_path), []).read_state()
    assert (st.seq, st.active, st.mode, st.floor, st.reason) == (7, 1, slots.REVERTED, V2_COUNTER, "deadline")
    assert st.confirmed == bytes(32)
