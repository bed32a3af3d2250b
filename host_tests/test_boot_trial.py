"""The trial guard of the main loop (cellguard/mainloop.py, started by firmware/main.py) on the real MicroPython unix port: every power-on is a new
interpreter running firmware/boot.py then firmware/main.py over the same device folder, with the
whole application (firmware/lib without cgboot) coming from signed images.

A trial image whose application raises is reverted and the old image runs; one that never confirms
is reverted at its confirm deadline; the status page then says `reverted (<reason>)` and `log`
shows the loader's revert. An intended reset (a hub REBOOT) is not taken for a failed trial even
where machine.reset() reads back as a watchdog reset."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from boot_kit import device_script, session_kit
from cgdev import image as image_tool
from harness import FIRMWARE, FIRMWARE_LIB, micropython_cmd, micropython_env

pytestmark = pytest.mark.timeout(300)

HEAP = "1M"  # the virtual board's: the image is held in the heap on the unix port
RESET_EXIT = 75  # runtime.reset() on the unix port: the process ends with this code
BOOT_AND_MAIN = "exec(open(%r).read())\nexec(open(%r).read())\n" % (str(FIRMWARE / "boot.py"), str(FIRMWARE / "main.py"))

# A trial image whose application raises on its first step (its modem and app replaced by stubs).
CRASHING_APP = '''
class App:
    def __init__(self, *args, **kwargs):
        self.state = "offline"
        self.on_command = None

    def step(self, timeout_ms=200):
        raise RuntimeError("trial image bug")
'''
STUB_MODEMSTATUS = '''
class _At:
    idle = None


class _Modem:
    at = _At()


class _Stub:
    modem = _Modem()
    refresh = None


def attach(profile):
    return _Stub()
'''

BROKEN_MAINLOOP = 'raise RuntimeError("main loop bug")\n'


@pytest.fixture(scope="session")
def kit(tmp_path_factory):
    return session_kit(tmp_path_factory)


def _app_image(kit, out: Path, version: str, patches: dict[str, str] | None = None) -> Path:
    # The real application, staged and signed as cellguard image release does, optionally patched.
    with tempfile.TemporaryDirectory() as tmp:
        app = image_tool.stage_application(Path(tmp) / "app")
        for rel, text in (patches or {}).items():
            (app / rel).write_text(text)
        image_tool.precompile(app)
        payload = image_tool.build(app, Path(tmp) / "app.romfs", compile_mpy=False)
        return image_tool.sign(kit.keys["ed_a"], payload, out, version)


@pytest.fixture(scope="session")
def images(kit, tmp_path_factory):
    d = tmp_path_factory.mktemp("trial-images")
    return {
        "good": _app_image(kit, d / "good.img", "1.0.0"),
        "next": _app_image(kit, d / "next.img", "1.1.0"),
        "crash": _app_image(
            kit, d / "crash.img", "1.1.0", {"cellguard/app.py": CRASHING_APP, "cellguard/modemstatus.py": STUB_MODEMSTATUS}
        ),
        "stub_modem": _app_image(kit, d / "stub_modem.img", "1.0.0", {"cellguard/modemstatus.py": STUB_MODEMSTATUS}),
        # The main loop itself is in the image: a broken one is a trial that fails, not a REPL.
        "broken_loop": _app_image(kit, d / "broken_loop.img", "1.1.0", {"cellguard/mainloop.py": BROKEN_MAINLOOP}),
    }


class Unit:
    """A device folder, the boot part (with the test's trusted keys) and power-ons."""

    def __init__(self, kit, root: Path):
        self.kit = kit
        self.lib = root / "lib"
        shutil.copytree(FIRMWARE_LIB / "cgboot", self.lib / "cgboot")
        shutil.copy(kit.lib / "boot_trusted.py", self.lib / "cgboot" / "trusted_keys.py")
        self.fs = root / "fs"
        self.env = micropython_env((self.lib, kit.lib), {**os.environ, "CELLGUARD_FS": str(self.fs)})

    def power_on(self, console_input: bytes | None = None, timeout: float = 60) -> tuple[int, str]:
        """boot.py then main.py in a fresh interpreter. With console_input the console gets it and
        then the end of input (main.py returns); without, the port stays open and quiet until the
        firmware resets itself (or the timeout fails the test)."""
        proc = subprocess.Popen(
            [*micropython_cmd(HEAP), "-c", BOOT_AND_MAIN],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env,
        )
        try:
            if console_input is not None:
                out, _ = proc.communicate(console_input, timeout=timeout)
            else:
                proc.wait(timeout=timeout)
                out = proc.stdout.read()
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stdin.close()
            proc.stdout.close()
        return proc.returncode, out.decode(errors="replace")

    def status(self) -> dict:
        code, out = self.power_on(b"\rstatus --json\r")
        assert code == 0, out
        return json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])

    def install(self, first: Path, confirm_deadline_s: int = 2) -> None:
        image_tool.install(first, self.fs)
        self.set_confirm_deadline(confirm_deadline_s)

    def set_confirm_deadline(self, seconds: int) -> None:
        app = {"hub_host": "127.0.0.1", "hub_port": 9, "confirm_deadline_s": seconds}
        (self.fs / "app.json").write_text(json.dumps(app))

    def stage_trial(self, candidate: Path) -> None:
        # What an over-the-air update leaves: the candidate in slot b, marked for test.
        shutil.copy(candidate, self.fs / "slots" / "b.img")
        script = device_script(self.kit, (), (
            "from cgboot import slots\n"
            "print(slots.Slots(%r, keys).mark_pending(1).describe()['mode'])\n" % str(self.fs)
        ))
        proc = subprocess.run([*micropython_cmd(HEAP), "-c", script], env=self.env, capture_output=True, text=True,
                              timeout=60)
        assert proc.stdout.strip().endswith("pending"), proc.stdout + proc.stderr


def _unit(kit, tmp_path, images, board: dict | None = None) -> Unit:
    u = Unit(kit, tmp_path)
    u.install(images["good"])
    if board is not None:
        (u.fs / "board.json").write_text(json.dumps(board))
    first = u.status()  # the factory boot adopts slot a as confirmed
    assert first["boot"]["state"] == "confirmed" and first["firmware"]["image_version"] == "1.0.0+0"
    return u


def test_trial_image_whose_application_raises_is_reverted(kit, tmp_path, images):
    board = {"name": "test", "modem": {"dialect": "bg96"}, "uart": {"id": "env:CG_TEST_NO_MODEM"}}
    u = _unit(kit, tmp_path, images, board=board)
    u.stage_trial(images["crash"])
    code, out = u.power_on()  # the trial: the application raises, main.py reports it and resets
    assert "booted slot b version 1.1.0+0 (trial)" in out, out
    assert code == RESET_EXIT and "trial image failed (crash)" in out, out
    snap = u.status()
    assert snap["boot"]["slot"] == "a" and snap["firmware"]["image_version"] == "1.0.0+0"
    assert snap["boot"]["state"] == "reverted (crash)" and snap["boot"]["mode"] == "reverted"
    assert any("boot: reverting trial image: crash" in e for _, e in snap["events"]), snap["events"]


def test_trial_image_whose_main_loop_is_broken_is_reverted(kit, tmp_path, images):
    # firmware/main.py only imports cellguard.mainloop from the verified image; when that fails the
    # boot part's fallback reports the crash and resets, and the next boot runs the old image.
    u = _unit(kit, tmp_path, images)
    u.stage_trial(images["broken_loop"])
    code, out = u.power_on()
    assert "booted slot b version 1.1.0+0 (trial)" in out, out
    assert code == RESET_EXIT and "trial image failed (crash)" in out, out
    snap = u.status()
    assert snap["boot"]["slot"] == "a" and snap["firmware"]["image_version"] == "1.0.0+0"
    assert snap["boot"]["state"] == "reverted (crash)", snap["boot"]


def test_a_broken_app_json_on_a_confirmed_image_leaves_the_console_running(kit, tmp_path, images):
    # A configuration fault is not the image's: no revert, no lockdown, no REPL; the console answers
    # and its page says why the application is not running.
    u = Unit(kit, tmp_path)
    u.install(images["stub_modem"])
    (u.fs / "board.json").write_text(json.dumps({"name": "test", "modem": {"dialect": "bg96"}, "uart": {"id": "x"}}))
    (u.fs / "app.json").write_text(json.dumps({"hub_port": 9}))
    code, out = u.power_on(b"\rstatus\r")
    assert code == 0, out
    assert "firmware    slot a  state confirmed" in out, out
    assert "app: not started (app.json has no hub_host)" in out, out


def test_main_py_is_a_small_trusted_stub():
    # The logic a board runs is in the signed image; main.py (flashed as a plain file, like boot.py)
    # imports only the image's main loop and the boot part's fallback.
    import ast

    tree = ast.parse((FIRMWARE / "main.py").read_text())
    imported = sorted(n.module + "." + a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names)
    assert imported == ["cellguard.mainloop", "cgboot.fallback"]
    assert not any(isinstance(n, (ast.Import, ast.FunctionDef, ast.ClassDef)) for n in ast.walk(tree))
    staged = image_tool.stage_application(Path(tempfile.mkdtemp()) / "app", device_libs=None)
    assert (staged / "cellguard" / "mainloop.py").is_file() and not (staged / "cgboot").exists()
    shutil.rmtree(staged.parent)


def test_trial_image_that_never_confirms_is_reverted_at_the_deadline(kit, tmp_path, images):
    u = _unit(kit, tmp_path, images)
    u.stage_trial(images["next"])
    code, out = u.power_on()  # a healthy image, but nothing acknowledges it: no confirm in 2 s
    assert "booted slot b version 1.1.0+0 (trial)" in out, out
    assert code == RESET_EXIT and "trial image failed (deadline)" in out, out
    code, page = u.power_on(b"\rstatus\rlog\r")  # the boot that reverts: the page and the log say so
    assert "firmware    slot a  state reverted (deadline)" in page, page
    assert "boot: reverting trial image: deadline" in page
    snap = u.status()  # and the state stays readable on every later boot
    assert snap["boot"]["state"] == "reverted (deadline)" and snap["boot"]["reason"] == "deadline"


def test_status_shows_the_trial_attempt_and_pending(kit, tmp_path, images):
    u = _unit(kit, tmp_path, images)
    u.stage_trial(images["next"])
    # The console must answer before the trial's deadline: 2 s was short for a loaded machine's
    # boot, verify and console (the trial reset first); the deadline itself is not this test's subject.
    u.set_confirm_deadline(600)
    code, page = u.power_on(b"\rstatus\r")  # answers before the deadline, then input ends
    assert code == 0 and "firmware    slot b  state testing (attempt 1/3)" in page, page


_INTENT = """
from cgboot import loader
loader.confirm = lambda: False            # this run's v2 never proves itself healthy
dev = bootsim.new_device(keys, imgs, max_attempts=3)
dev.power_on(lambda v, st: "v2" if v == "1.0.0" else None); dev.reboot()
dev.power_on(lambda v, st: None)          # v2 on trial
loader.intend_reset("reboot", root=bootsim.FS)   # the hub asked for a reboot
dev.reboot()
dev.power_on(lambda v, st: None, reset_cause="watchdog")   # how an RP2040 reports machine.reset()
dev.reboot()
dev.power_on(lambda v, st: None, reset_cause="watchdog")   # a real watchdog reset: no intent left
dev.reboot()
print(json.dumps({"boots": dev.boots[2:], "state": dev.check_state()[1].describe()}))
"""


def test_intended_reset_during_a_trial_is_not_a_crash(kit):
    from harness import run_micropython

    script = device_script(kit, ("v1", "v2"), _INTENT)
    out = run_micropython(script, heapsize="4M", extra_paths=(kit.lib,)).strip().splitlines()
    result = json.loads(out[-1])
    assert result["boots"] == [["v2", True], ["v2", True], ["v1", False]]  # a 2nd trial boot, then revert
    assert result["state"]["mode"] == "reverted" and result["state"]["reason"] == "watchdog"


def test_the_page_headline_and_version_name_the_running_image(kit, tmp_path, images):
    # The library's VERSION (0.1.0) is not what runs: the signed image booted from slot a is 1.0.0.
    u = _unit(kit, tmp_path, images)
    code, out = u.power_on(b"\rstatus\rversion\r")
    assert code == 0, out
    assert "\ncellguard 1.0.0  board " in out.replace("cellguard> ", "\n"), out
    assert "cellguard 1.0.0  slot a  " in out, out
    assert "cellguard 0.1.0" not in out.split("type `help`")[-1], out


def test_status_says_rescue_when_only_the_failed_image_verifies(kit, tmp_path, images):
    # The trial of 1.1.0 fails (deadline), then one bit of the confirmed 1.0.0 decays: 1.1.0 is all
    # that verifies. It runs in rescue, never as the confirmed image, and the page and log say so.
    u = _unit(kit, tmp_path, images)
    u.stage_trial(images["next"])
    code, out = u.power_on()
    assert code == RESET_EXIT and "trial image failed (deadline)" in out, out
    assert u.status()["boot"]["state"] == "reverted (deadline)"
    slot_a = u.fs / "slots" / "a.img"
    data = bytearray(slot_a.read_bytes())
    data[200] ^= 4
    slot_a.write_bytes(data)
    code, page = u.power_on(b"\rstatus\rlog\r")
    assert code == 0, page
    assert "firmware    slot b  state rescue (running an image that failed its trial" in page, page
    assert "boot: only an image that failed its trial verifies" in page
    snap = u.status()
    assert snap["boot"]["mode"] == "rescue" and snap["firmware"]["image_version"] == "1.1.0+0"


_HELLO_REASONS = """
from cellguard import mainloop

class R:
    def __init__(self, trial, event):
        self.trial, self.event = trial, event

cases = (None, R(True, None), R(False, None), R(False, "rescue"), R(False, "fallback"),
         R(False, "state damaged"), R(False, "recovered"))
print([mainloop.boot_reason(r) for r in cases])
"""


def test_hello_boot_reason_says_rescue_and_recovered():
    # docs/protocol.md section 5: 0 confirmed, 1 trial, 2 rescue, 3 recovered (the boot part chose
    # again: a broken confirmed image, damaged boot state).
    from harness import run_micropython

    out = run_micropython(_HELLO_REASONS, heapsize=HEAP, extra_paths=(FIRMWARE_LIB,)).strip().splitlines()
    assert out[-1] == "[0, 1, 0, 2, 3, 3, 3]"
