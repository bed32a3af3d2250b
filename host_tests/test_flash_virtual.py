"""`make flash` against the virtual board: tools/flash.py -> real mpremote -> pty -> real MicroPython."""

import json
import os
import signal

import pytest
from harness import FIRMWARE_LIB
from vboard import Board, flash, run_tool

pytestmark = pytest.mark.timeout(300)  # a flash and an mpremote run: over 120 s with six workers on two cores


@pytest.fixture
def board(tmp_path):
    b = Board(tmp_path)
    yield b
    b.stop()


def summary(proc) -> dict:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-2])  # the --json line precedes "flashed ..."


def test_flash_boots_and_reflash_is_incremental(board, tmp_path):
    key = tmp_path / "master.key"
    first = summary(flash(board, key, "--json"))
    assert "lib/cellguard/console.py" in first["sent"] and "boot.py" in first["sent"]
    assert first["status"]["firmware"]["version"] == first["status"]["firmware"]["version"]
    # the virtual board's profile fits no sensor and no tamper switch: the page says so, not a fault
    assert first["status"]["sensor"]["fitted"] == first["status"]["tamper"]["fitted"] == "none"
    # A stale module from an older firmware on the device is removed; nothing unchanged is sent.
    board.mpremote("exec", "with open('lib/cellguard/old_module.py','w') as f: f.write('x=1')")
    again = summary(flash(board, key, "--json"))
    assert again["sent"] == []
    assert set(again["unchanged"]) == set(first["sent"])
    assert again["removed"] == ["lib/cellguard/old_module.py"]
    assert again["device_id"] == first["device_id"]  # the unit keeps its identity across re-flashes
    assert "fits virtual" in flash(board, key).stdout


def test_flash_copies_every_firmware_module(board, tmp_path):
    summary(flash(board, tmp_path / "k", "--json"))
    listing = board.mpremote("fs", "ls", ":lib/cellguard").stdout
    for mod in FIRMWARE_LIB.joinpath("cellguard").glob("*.py"):
        assert mod.name in listing
    # ... and the pinned drivers they import (cellguard bundle), compiled for MicroPython
    assert "adafruit_sht4x.mpy" in board.mpremote("fs", "ls", ":lib").stdout
    assert "i2c_device.mpy" in board.mpremote("fs", "ls", ":lib/adafruit_bus_device").stdout


def test_runtime_mismatch_is_refused(board, tmp_path):
    proc = flash(board, tmp_path / "k", "--board", "feather-rp2040-nrf9160")
    assert proc.returncode == 4
    assert "board/runtime mismatch" in proc.stderr and "circuitpython" in proc.stderr
    # Nothing was copied: the device still has an empty flash.
    assert "boot.py" not in board.mpremote("fs", "ls").stdout


def test_runtime_too_old_and_wrong_machine_are_refused(board, tmp_path):
    boards = tmp_path / "boards"
    for name, runtime in (("future", {"name": "micropython", "min_version": "99.0.0"}),
                          ("rp2only", {"name": "micropython", "min_version": "1.0.0", "machine_contains": "RP2040"})):
        (boards / name).mkdir(parents=True)
        (boards / name / "board.json").write_text(json.dumps({"name": name, "runtime": runtime}))
    too_old = flash(board, tmp_path / "k", "--board", "future", "--boards-dir", str(boards))
    assert too_old.returncode == 4 and "runtime too old" in too_old.stderr
    wrong = flash(board, tmp_path / "k", "--board", "rp2only", "--boards-dir", str(boards))
    assert wrong.returncode == 4 and "RP2040" in wrong.stderr


def test_unknown_board_lists_the_known_ones(tmp_path):
    proc = run_tool("flash", "--board", "no-such-board", "--port", "/dev/null")
    assert proc.returncode == 2 and "pico-w-sim7080" in proc.stderr


def test_steps_waiting_for_other_parts_say_skipped_never_done(board, tmp_path):
    out = flash(board, tmp_path / "k").stdout
    for step in ("install the first signed image into slot A", "provision the unit"):
        line = out.split(step, 1)[1].splitlines()[1].strip()
        assert line.startswith(("done: device ", "skipped: ", "slot a: cellguard")), line


def test_no_port_flashes_the_virtual_board(tmp_path):
    vdir = tmp_path / "vb"
    proc = run_tool("flash", "--virtual-dir", str(vdir), "--service-key", str(tmp_path / "k"))
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "started the virtual board" in proc.stdout and "booted: cellguard" in proc.stdout
        second = run_tool("flash", "--virtual-dir", str(vdir), "--service-key", str(tmp_path / "k"))
        assert "reusing the virtual board" in second.stdout and second.returncode == 0
    finally:
        pid_file = vdir / "pid"
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGTERM)


def test_slot_a_gets_the_signed_image_when_the_bootloader_is_in_the_tree(board, tmp_path):
    from cgdev import flash as flash_tool

    key = tmp_path / "k"
    signing = ("--signing-key", str(tmp_path / "dev-signing.pem"))
    first = flash(board, key, *signing)
    assert first.returncode == 0, first.stdout + first.stderr
    step4 = first.stdout.split("into slot A", 1)[1].splitlines()[1].strip()
    if not flash_tool.bootloader_present():
        assert step4.startswith("skipped: the A/B bootloader is not in this tree yet")
        return
    assert step4.startswith("slot a: cellguard")
    # What flash.py installed is an image imgtool itself accepts (read back from the device).
    from cgdev import image as image_tool

    board.mpremote("fs", "cp", ":slots/a.img", str(tmp_path / "installed.img"))
    assert "Image was correctly validated" in image_tool.imgtool_verify(tmp_path / "dev-signing.pem",
                                                                        tmp_path / "installed.img")
    page = run_tool("status", "--port", board.port).stdout
    assert "firmware    slot a  state confirmed" in page
    again = flash(board, key, *signing)
    assert "(unchanged on the device)" in again.stdout  # the image is cached: boot state kept
    # A production flash signed with a key the boot part does not trust is refused, not bricked.
    refused = flash(board, key, *signing, "--production")
    assert refused.returncode == 8 and "not among the boot part's trusted keys" in refused.stderr
    assert "development (unlocked)" in run_tool("status", "--port", board.port).stdout


def test_flash_provisions_the_unit_once(board, tmp_path):
    """Step 5 runs the SIM-lock provisioning through the unit's own modem; a re-flash keeps the keys."""
    import sqlite3

    key = tmp_path / "master.key"
    first = flash(board, key)
    assert first.returncode == 0, first.stdout + first.stderr
    step5 = first.stdout.split("[5/8]")[1].split("[6/8]")[0]
    assert "done: device cg-" in step5 and "SIM lock OK" in step5, step5
    devices = sqlite3.connect(board.workdir / "hub.sqlite").execute("SELECT device_id, retired FROM devices").fetchall()
    assert len(devices) == 1 and devices[0][1] == 0
    assert "binding" in board.mpremote("fs", "ls", ":state").stdout
    again = flash(board, key)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "skipped: already provisioned as device " + devices[0][0] in again.stdout
    assert len(sqlite3.connect(board.workdir / "hub.sqlite").execute("SELECT * FROM devices").fetchall()) == 1


def test_flash_forwards_the_provisioning_options(board, tmp_path):
    """--unlocked, --factory-pin and the APN credentials reach provision.py; the password only
    through a file (or the environment), never a command line, and it is never printed."""
    secret = "Pa55-" + os.urandom(4).hex()
    pw_file = tmp_path / "apn-password"
    pw_file.write_text(secret + "\n")
    proc = flash(board, tmp_path / "master.key", "--unlocked", "--factory-pin", "1234", "--apn", "iot.test",
                 "--apn-user", "meter", "--apn-password-file", str(pw_file))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    step5 = proc.stdout.split("[5/8]")[1].split("[6/8]")[0]
    assert "SIM lock UNLOCKED" in step5, step5
    assert secret not in proc.stdout + proc.stderr
    out = board.mpremote("exec", "from cellguard import simlock\n"
                         "a = simlock.load_apn()\n"
                         "print('APN', a[0], a[1], a[2] == %r)" % secret).stdout
    assert "APN iot.test meter True" in out, out


def test_flash_never_puts_the_apn_password_on_a_command_line(monkeypatch, tmp_path):
    import argparse

    from cgdev import flash as flash_tool

    seen = {}

    def fake_run(cmd, **kw):
        seen.update(cmd=cmd, env=kw.get("env"))
        return argparse.Namespace(returncode=5, stdout="", stderr="provisioning refused: already provisioned as device x")

    monkeypatch.setattr(flash_tool.subprocess, "run", fake_run)
    monkeypatch.delenv("CELLGUARD_APN_PASSWORD", raising=False)
    args = argparse.Namespace(
        no_provision=False, reprovision=False, hub_db=tmp_path / "hub.db", unlocked=True, factory_pin="4321",
        apn="iot.test", apn_user="meter", apn_password="argv-secret", apn_password_file=None,
    )
    flash_tool.provision("/dev/null", {"name": "virtual"}, args)
    assert "argv-secret" not in " ".join(seen["cmd"])
    assert seen["env"]["CELLGUARD_APN_PASSWORD"] == "argv-secret"
    for flag in ("--unlocked", "--apn", "iot.test", "--apn-user", "meter"):
        assert flag in seen["cmd"]


def test_flash_never_puts_the_factory_pin_on_a_command_line(monkeypatch, tmp_path):
    import argparse

    from cgdev import flash as flash_tool

    seen = {}

    def fake_run(cmd, **kw):
        seen.update(cmd=cmd, env=kw.get("env"))
        return argparse.Namespace(returncode=5, stdout="", stderr="provisioning refused: already provisioned as device x")

    monkeypatch.setattr(flash_tool.subprocess, "run", fake_run)
    monkeypatch.delenv("CELLGUARD_FACTORY_PIN", raising=False)
    args = argparse.Namespace(
        no_provision=False, reprovision=False, hub_db=tmp_path / "hub.db", unlocked=False, factory_pin="4321",
        factory_pin_file=tmp_path / "pin", apn="iot", apn_user=None, apn_password=None, apn_password_file=None,
    )
    flash_tool.provision("/dev/null", {"name": "virtual"}, args)
    assert "4321" not in " ".join(seen["cmd"]) and "--factory-pin" not in seen["cmd"]
    assert seen["env"]["CELLGUARD_FACTORY_PIN"] == "4321"
    assert seen["cmd"][seen["cmd"].index("--factory-pin-file") + 1] == str(tmp_path / "pin")


def test_flash_passes_a_postgresql_key_store_on_as_its_url(monkeypatch, tmp_path):
    """--hub-db postgresql://...: provisioning gets the URL as given (not a path that folded its '//'),
    and no development KEK is made for it (a production line's database brings its own KEK)."""
    import argparse

    from cgdev import flash as flash_tool

    url = "postgresql://line@db.example:5432/hub?sslmode=require"
    parsed = {}

    def fake_flash(args):
        parsed["args"] = args
        return 0

    monkeypatch.setattr(flash_tool, "flash", fake_flash)
    assert flash_tool.main(["--no-provision", "--hub-db", url]) == 0
    args = parsed["args"]
    assert args.hub_db == url
    seen = {}

    def fake_run(cmd, **kw):
        seen.update(cmd=cmd)
        return argparse.Namespace(returncode=5, stdout="", stderr="provisioning refused: already provisioned as device x")

    monkeypatch.setattr(flash_tool.subprocess, "run", fake_run)
    monkeypatch.delenv("CELLGUARD_HUB_KEK", raising=False)
    monkeypatch.delenv("CELLGUARD_HUB_KEK_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    args.no_provision = False
    flash_tool.provision("/dev/null", {"name": "virtual"}, args)
    assert seen["cmd"][seen["cmd"].index("--hub-db") + 1] == url
    assert list(tmp_path.iterdir()) == []  # no hub.kek, no directory named after the URL


def test_the_image_is_signed_for_the_profiles_slot_size(board, tmp_path):
    # flash.py signs slot A for the profile's slot_size: a profile whose slot is too small for the
    # application is refused with a clear message before anything is written.
    from harness import REPO

    profile = json.loads((REPO / "boards" / "virtual" / "board.json").read_text())
    boards = tmp_path / "boards"
    (boards / "tiny").mkdir(parents=True)
    (boards / "tiny" / "board.json").write_text(json.dumps({**profile, "name": "tiny", "slot_size": 32768}))
    proc = flash(board, tmp_path / "k", "--board", "tiny", "--boards-dir", str(boards),
                 "--signing-key", str(tmp_path / "dev-signing.pem"))
    assert proc.returncode == 8, proc.stdout + proc.stderr
    assert "flash: the application image cannot be signed for this board's 32768-byte slot" in proc.stderr
    assert "boot.py" not in board.mpremote("fs", "ls").stdout


def test_a_long_copy_shows_progress(board, tmp_path):
    # On a terminal, files of 8 KiB and more get a progress bar redrawn as mpremote reports chunks.
    import pty
    import re
    import subprocess
    import sys
    import threading

    from harness import REPO

    master, slave = pty.openpty()
    cmd = [sys.executable, str(REPO / "tools" / "flash.py"), "--port", board.port, "--no-provision",
           "--service-key", str(tmp_path / "k"), "--signing-key", str(tmp_path / "dev-signing.pem")]
    proc = subprocess.Popen(cmd, stdout=slave, stderr=subprocess.PIPE, cwd=REPO)
    os.close(slave)
    seen = bytearray()

    def drain():
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the tool exited and closed the terminal
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert proc.wait(timeout=100) == 0, proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(timeout=5)
        os.close(master)
    text = seen.decode(errors="replace")
    shown = [int(p) for p in re.findall(r"slots/a\.img \[[#.]+\]\s+(\d+)%", text)]
    assert shown and shown[-1] == 100, text[-2000:]
    assert any(0 < p < 100 for p in shown), shown  # it moved while the copy ran


def test_a_production_flash_that_fails_at_provisioning_leaves_the_unit_unlocked(board, tmp_path):
    # The console lock is the last thing written: a SIM that refuses the factory PIN stops the
    # flash at step 5, and the unit is still open for the next attempt (no service key needed).
    pin = tmp_path / "wrong-pin"
    pin.write_text("9999\n")
    proc = flash(board, tmp_path / "master.key", "--production", "--trust-signing-key", "--factory-pin-file", str(pin))
    assert proc.returncode == 6 and "provisioning failed" in proc.stderr, proc.stdout + proc.stderr
    assert "[6/8]" not in proc.stdout
    page = run_tool("status", "--port", board.port)
    assert page.returncode == 0 and "console     development (unlocked)" in page.stdout, page.stdout + page.stderr
    assert "console.json" not in board.mpremote("fs", "ls", ":state").stdout
