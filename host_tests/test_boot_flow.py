"""Boot flow on the real MicroPython interpreter: install, trial boot, confirm, revert (after N
attempts, a watchdog reset or a reported crash), resumable downloads, and firmware/boot.py itself."""

import json
import shutil

import pytest
from boot_kit import device_script, make_app, session_kit
from cgdev import image as image_tool
from harness import FIRMWARE, FIRMWARE_LIB, run_micropython

# boot.py compiles cgboot and the console's modules from source onto the heap here; a board has
# cgboot frozen (no heap), so it needs far less than this.
BOOT_PY_HEAP = "256K"


@pytest.fixture(scope="session")
def kit(tmp_path_factory):
    return session_kit(tmp_path_factory)


def run_device(kit, body: str, names=("v1", "v2", "v3")) -> list[str]:
    script = device_script(kit, names, body)
    return run_micropython(script, heapsize="4M", extra_paths=(kit.lib,)).strip().splitlines()


def test_update_installs_trial_boots_confirms_then_bad_one_reverts(kit):
    # The acceptance test: an imgtool-signed update from a fresh key pair (made by this session)
    # installs, trial-boots and confirms; a second, bad update trial-boots and reverts by itself.
    out = run_device(
        kit,
        """
dev = bootsim.new_device(keys, imgs)
used, cut, outcome = bootsim.run_scenario(dev, bootsim.upgrade_then_bad_plan)
ok, st = dev.check_state()
print(json.dumps({"boots": dev.boots, "outcome": outcome, "state": st.describe(), "ok": ok,
                  "bricked": dev.bricked, "unverified": dev.unverified}))
""",
    )
    result = json.loads(out[-1])
    assert result["boots"] == [
        ["v1", False],  # factory image (confirmed at first boot)
        ["v1", False],  # downloads v2 into slot b, marks it for test
        ["v2", True],  # trial boot; healthy, confirms; downloads v3 into slot a
        ["v3", True],  # trial 1: never confirms
        ["v3", True],  # trial 2 (max_attempts = 2)
        ["v2", False],  # reverted
    ]
    assert result["outcome"] == "done" and result["ok"]
    assert result["state"]["mode"] == "reverted" and result["state"]["reason"] == "not confirmed"
    assert result["state"]["active"] == "b"
    assert result["state"]["floor"] == (1 << 24) | (1 << 16)  # raised to v2's counter at confirm only
    assert result["bricked"] == result["unverified"] == 0


_TRIAL = """
dev = bootsim.new_device(keys, imgs, max_attempts=%d)
dev.power_on(lambda v, st: "v3" if v == "1.0.0" else None)   # install v3 (bad) as candidate
dev.reboot()
for cause in %r:
    dev.power_on(lambda v, st: None, reset_cause=cause)
    dev.reboot()
ok, st = dev.check_state()
print(json.dumps({"boots": dev.boots[2:], "state": st.describe()}))
"""


@pytest.mark.parametrize(
    "max_attempts, causes, trials, reason",
    [
        (3, [None, None, None, None], 3, "not confirmed"),  # N attempts, then revert
        (3, [None, "watchdog", None], 1, "watchdog"),  # a watchdog reset during the trial: at once
        (1, [None, None], 1, "not confirmed"),
    ],
)
def test_unconfirmed_image_reverts(kit, max_attempts, causes, trials, reason):
    out = json.loads(run_device(kit, _TRIAL % (max_attempts, causes))[-1])
    boots = out["boots"]
    assert boots[:trials] == [["v3", True]] * trials
    assert all(b == ["v1", False] for b in boots[trials:]) and len(boots) > trials
    assert out["state"]["mode"] == "reverted" and out["state"]["reason"] == reason
    assert out["state"]["floor"] == 1 << 24  # v1's counter: the failed image never raised it


def test_reported_crash_reverts_at_next_boot(kit):
    out = run_device(
        kit,
        """
from cgboot import loader
dev = bootsim.new_device(keys, imgs, max_attempts=5)
dev.power_on(lambda v, st: "v3" if v == "1.0.0" else None)
dev.reboot()
dev.power_on(lambda v, st: None)       # v3 on trial; the app catches its own exception and reports it
print("reported", loader.report_crash("crash")); dev.reboot()
dev.power_on(lambda v, st: None); dev.reboot()
print(json.dumps({"boots": dev.boots[2:], "state": dev.check_state()[1].describe()}))
""",
    )
    result = json.loads(out[-1])
    assert result["boots"] == [["v3", True], ["v1", False]]
    assert result["state"]["reason"] == "crash"


def test_download_resumes_after_power_cut_and_confirm_survives(kit):
    out = run_device(
        kit,
        """
import hashlib
from flashsim import PowerCut
from cgboot import update
dev = bootsim.new_device(keys, imgs)
data = imgs["v2"]
dev.mount()
w = update.UpdateWriter(dev.slots())
off = w.offer(len(data), hashlib.sha256(data).digest())
off = w.write(off, data[:1024])
dev.flash.arm(3)                       # power fails in the middle of the next chunks
try:
    while off < len(data):
        off = w.write(off, data[off:off + 512])
except PowerCut:
    pass
dev.reboot(); dev.mount()
w = update.UpdateWriter(dev.slots())
resume = w.offer(len(data), hashlib.sha256(data).digest())
print("resume", resume)
dup = w.write(0, data[:512])           # a duplicate chunk is ignored: the writer says where to go on
print("dup", dup == resume)
off = resume
while off < len(data):
    off = w.write(off, data[off:off + 512])
info = w.finish()
dev.reboot()
dev.power_on(lambda v, st: None); dev.reboot()
print("boots", json.dumps(dev.boots[1:]))
""",
    )
    resume = int(out[-3].split()[1])
    assert 1024 <= resume < (512 * 6)
    assert out[-2] == "dup True"
    assert json.loads(out[-1].split(" ", 1)[1]) == [["v2", True]]


def test_corrupt_active_slot_falls_back_to_a_verified_other_slot(kit):
    out = run_device(
        kit,
        """
dev = bootsim.new_device(keys, imgs)
dev.mount()
s = dev.slots()
with open(s.slot_path(1), "wb") as f:
    f.write(imgs["v2"])                # a complete image never marked (the cut came before)
with open(s.slot_path(0), "r+b") as f:
    f.seek(100); f.write(b"rot")       # the confirmed image decays
dev.reboot()
dev.power_on(lambda v, st: None); dev.reboot()
print(json.dumps({"boots": dev.boots[1:], "state": dev.check_state()[1].describe()}))
""",
    )
    result = json.loads(out[-1])
    assert result["boots"] == [["v2", False]]
    assert result["state"]["active"] == "b" and result["state"]["reason"] == "fallback"


def test_update_refused_while_an_image_is_on_trial(kit):
    out = run_device(
        kit,
        """
import hashlib
from cgboot import update
dev = bootsim.new_device(keys, imgs, max_attempts=3)
dev.power_on(lambda v, st: "v3" if v == "1.0.0" else None); dev.reboot()
dev.power_on(lambda v, st: None)       # v3 on trial, not confirmed
try:
    update.UpdateWriter(dev.slots()).offer(len(imgs["v2"]), hashlib.sha256(imgs["v2"]).digest())
    print("ACCEPTED")
except update.UpdateError as e:
    print(e.reason)
""",
    )
    assert out[-1] == "busy"


def test_firmware_boot_py_mounts_the_verified_image(kit, tmp_path):
    # boot.py as a board runs it: the built-in trusted keys (here: this session's, in a copy of the
    # boot part), the filesystem root from CELLGUARD_FS, the app imported from the mounted image.
    lib = tmp_path / "lib"
    shutil.copytree(FIRMWARE_LIB / "cgboot", lib / "cgboot")
    shutil.copy(kit.lib / "boot_trusted.py", lib / "cgboot" / "trusted_keys.py")
    fs = tmp_path / "fs"
    (fs / "slots").mkdir(parents=True)
    shutil.copy(kit.images["v2"], fs / "slots" / "a.img")
    script = "exec(open(%r).read())\nimport appmain\nprint('app', appmain.VERSION)\n" % str(
        FIRMWARE / "boot.py"
    )
    env_fs = {"CELLGUARD_FS": str(fs)}
    import os

    out = run_micropython(script, extra_paths=(lib,), env={**os.environ, **env_fs}, heapsize=BOOT_PY_HEAP)
    assert "cgboot: booted slot a version 1.1.0+0" in out
    assert out.strip().splitlines()[-1] == "app 1.1.0"
    # A slot that does not verify is refused, and boot.py falls back loudly.
    app = make_app(tmp_path / "evil", "6.6.6", True, 0)
    payload = image_tool.build(app, tmp_path / "evil.romfs")
    image_tool.sign(kit.keys["rogue"], payload, fs / "slots" / "a.img", "6.6.6")
    for f in (fs / "state").iterdir():
        f.unlink()
    out = run_micropython(
        "exec(open(%r).read())\n" % str(FIRMWARE / "boot.py"),
        extra_paths=(lib,),
        env={**os.environ, **env_fs},
        heapsize=BOOT_PY_HEAP,
    )
    assert "unknown_key" in out and "RUNNING UNVERIFIED CODE FROM /lib" in out


def test_boot_py_without_slots_falls_back_loudly(tmp_path):
    import os

    out = run_micropython(
        "exec(open(%r).read())\n" % str(FIRMWARE / "boot.py"),
        env={**os.environ, "CELLGUARD_FS": str(tmp_path)},
        heapsize=BOOT_PY_HEAP,
    )
    assert "NO VERIFIED IMAGE" in out and "RUNNING UNVERIFIED CODE FROM /lib" in out


def test_trusted_part_is_separate_and_freezable():
    # The boot part imports nothing from the updatable application, and the example manifest
    # freezes exactly the cgboot package.
    import ast

    from harness import REPO

    def imported(nodes):
        for node in nodes:
            if isinstance(node, ast.Import):
                yield from (a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                yield node.module.split(".")[0]

    for path in (FIRMWARE_LIB / "cgboot").glob("*.py"):
        tree = ast.parse(path.read_text())
        assert "cellguard" not in set(imported(ast.walk(tree))), path
        assert not {"machine", "board", "busio"} & set(imported(tree.body)), path
    calls = []
    manifest = REPO / "boards" / "manifest_trusted.py"
    exec(
        manifest.read_text(),
        {"package": lambda name, base_path=".", opt=None: calls.append((name, base_path))},
    )
    assert [name for name, _ in calls] == ["cgboot"]
    assert (manifest.parent / calls[0][1] / "cgboot" / "__init__.py").is_file()


def test_the_image_that_was_just_reverted_is_not_installed_again(kit):
    out = run_device(
        kit,
        """
from cgboot import image as img
dev = bootsim.new_device(keys, imgs, max_attempts=1)
dev.power_on(lambda v, st: "v3" if v == "1.0.0" else None); dev.reboot()
dev.power_on(lambda v, st: None); dev.reboot()       # trial, no confirm
dev.power_on(lambda v, st: None); dev.reboot()       # reverted
try:
    dev.power_on(lambda v, st: "v3")                 # the hub offers the same image again
    print("ACCEPTED")
except img.Rejected as e:
    print(e.reason)
""",
    )
    assert out[-1] == "reverted_before"


def test_state_survives_a_torn_record_on_a_filesystem_without_atomic_writes(tmp_path):
    # CPython on a plain folder: the two alternating records keep the previous state readable
    # when the newest record is half-written or corrupt.
    from cgboot import slots

    s = slots.Slots(str(tmp_path), [])
    s.write_state(slots.BootState(active=0, floor=5))
    s.write_state(slots.BootState(active=0, mode=slots.PENDING, floor=5, digest=b"d" * 32))
    newest = tmp_path / "state" / "boot.0"  # record 2 -> boot.(2 % 2)
    good = newest.read_bytes()
    for damaged in (good[: len(good) // 2], good[:-1] + bytes([good[-1] ^ 1]), b"", b"\xff" * len(good)):
        newest.write_bytes(damaged)
        st = s.read_state()
        assert (st.seq, st.mode, st.floor) == (1, slots.CONFIRMED, 5)
    newest.write_bytes(good)
    assert s.read_state().mode == slots.PENDING
    # the next write goes to the file that does not hold the newest record
    s.write_state(s.read_state().copy(mode=slots.CONFIRMED))
    assert (tmp_path / "state" / "boot.1").read_bytes() != good and s.read_state().seq == 3


_BOARD_BOOT = """
exec(open(%(boot)r).read())                     # firmware/boot.py, exactly as a board runs it
import hashlib, sys
from cgboot import loader, slots, update
import appmain                                  # the application, from the verified image
r = loader.current()
trial = r.trial
if trial and appmain.HEALTHY:
    loader.confirm()
offer = %(offer)r
if offer and not trial:
    with open(offer, 'rb') as f:
        data = f.read()
    w = update.UpdateWriter(r.slots)
    off = w.offer(len(data), hashlib.sha256(data).digest())
    while off < len(data):
        off = w.write(off, data[off:off + 512])
    w.finish()
print("RAN", appmain.VERSION, trial)
"""


def test_each_boot_a_new_interpreter_through_boot_py(kit, tmp_path):
    # Every power-on is a new MicroPython process running firmware/boot.py over the same folder:
    # v1 installed at the factory, v2 delivered and confirmed, v3 delivered and reverted after the
    # default three unconfirmed attempts.
    import os

    lib = tmp_path / "lib"
    shutil.copytree(FIRMWARE_LIB / "cgboot", lib / "cgboot")
    shutil.copy(kit.lib / "boot_trusted.py", lib / "cgboot" / "trusted_keys.py")
    fs = tmp_path / "fs"
    image_tool.install(kit.images["v1"], fs)
    env = {**os.environ, "CELLGUARD_FS": str(fs)}
    ran = []
    for offer in ["v2", None, "v3", None, None, None, None]:
        script = _BOARD_BOOT % {
            "boot": str(FIRMWARE / "boot.py"),
            "offer": str(kit.images[offer]) if offer else None,
        }
        out = run_micropython(script, extra_paths=(lib,), env=env, heapsize=BOOT_PY_HEAP)
        ran.append(out.strip().splitlines()[-1])
    assert ran == [
        "RAN 1.0.0 False",  # factory image; downloads v2
        "RAN 1.1.0 True",  # trial, confirms
        "RAN 1.1.0 False",  # confirmed; downloads v3
        "RAN 1.2.0 True",  # bad: three attempts, never confirms
        "RAN 1.2.0 True",
        "RAN 1.2.0 True",
        "RAN 1.1.0 False",  # reverted
    ]


def test_signed_image_that_does_not_mount_is_reverted(kit, tmp_path):
    # Authentic but not a ROMFS (a packaging mistake): the trial fails at once and v1 runs.
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a romfs" * 50)
    bad = image_tool.sign(kit.keys["ed_a"], junk, tmp_path / "junk.img", "1.5.0")
    out = (
        run_micropython(device_script(kit, ("v1",), _JUNK % str(bad)), heapsize="4M", extra_paths=(kit.lib,))
        .strip()
        .splitlines()
    )
    result = json.loads(out[-1])
    assert result["boots"] == [["v1", False]] and result["state"]["reason"] == "mount failed"


_JUNK = """
dev = bootsim.new_device(keys, imgs)
with open(%r, "rb") as f:
    junk = f.read()
dev.mount()
dev.download(dev.slots(), junk)
dev.reboot()
dev.power_on(lambda v, st: None); dev.reboot()
print(json.dumps({"boots": dev.boots[1:], "state": dev.check_state()[1].describe()}))
"""


def test_boot_py_takes_the_slot_size_from_the_board_profile(kit, tmp_path):
    # A 160 KiB image signed for a 256 KiB slot (esp32s3-bg95, feather) boots where board.json says
    # 262144; the same image on a 128 KiB-slot profile is refused as oversized, never read whole.
    import os

    lib = tmp_path / "lib"
    shutil.copytree(FIRMWARE_LIB / "cgboot", lib / "cgboot")
    shutil.copy(kit.lib / "boot_trusted.py", lib / "cgboot" / "trusted_keys.py")
    app = make_app(tmp_path / "big", "2.0.0", True, 160 * 1024)
    payload = image_tool.build(app, tmp_path / "big.romfs")
    fs = tmp_path / "fs"
    image_tool.install(image_tool.sign(kit.keys["ed_a"], payload, tmp_path / "big.img", "2.0.0", slot_size=262144), fs)
    env = {**os.environ, "CELLGUARD_FS": str(fs)}
    script = "exec(open(%r).read())\n" % str(FIRMWARE / "boot.py")
    (fs / "board.json").write_text(json.dumps({"name": "esp32s3-bg95", "slot_size": 262144}))
    out = run_micropython(script, extra_paths=(lib,), env=env, heapsize="1M")
    assert "cgboot: booted slot a version 2.0.0+0" in out, out
    for f in (fs / "state").iterdir():
        f.unlink()
    (fs / "board.json").write_text(json.dumps({"name": "pico-w-sim7080", "slot_size": 131072}))
    out = run_micropython(script, extra_paths=(lib,), env=env, heapsize="1M")
    assert "slot a rejected: oversized" in out and "NO VERIFIED IMAGE" in out, out
