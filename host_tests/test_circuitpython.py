"""cellguard's CircuitPython code paths, run on the MicroPython unix port and CPython through the
test shim (host_tests/mp_support/cpy_shim: CircuitPython's module names on the host's modules)."""

import os
import pty
import select
import threading
import tty

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from harness import FIRMWARE, MP_SUPPORT, spawn_micropython

CPY_SHIM = MP_SUPPORT / "cpy_shim"


def run_cpy(runtime, script, **kwargs):
    """Run `script` on `runtime` with the CircuitPython shim first on the path."""
    kwargs.setdefault("extra_paths", (CPY_SHIM,))
    return runtime.run(script, **kwargs)


def test_runtime_takes_circuitpython_branches(runtime):
    out = run_cpy(runtime, "from cellguard import runtime as r\nprint(r.NAME, r.UNIX_PORT, r.HOST)")
    assert out.split() == ["circuitpython", "False", "True"]


def test_without_shim_nothing_changes(runtime):
    out = runtime.run("from cellguard import runtime as r\nprint(r.NAME)")
    assert out.strip() == runtime.name


def test_aesio_blocks_match_cryptography(runtime):
    plain = bytes(range(48))
    out = run_cpy(
        runtime,
        "from cellguard import runtime\n"
        "key = bytes(range(16, 32))\n"
        "buf = bytearray(bytes(range(48)))\n"
        "out = bytearray(48)\n"
        "runtime.aes_block(key).encrypt(buf, out)\n"
        "runtime.aes_block(key).encrypt(buf, buf)\n"
        "print(out.hex(), buf == out)",
    )
    hexed, inplace = out.split()
    enc = Cipher(algorithms.AES(bytes(range(16, 32))), modes.ECB()).encryptor()
    assert hexed == enc.update(plain).hex()
    assert inplace == "True"


def test_sha256_uses_hashlib_new(runtime):
    # The shim's hashlib has no sha256(): passing proves the CircuitPython branch calls new().
    out = run_cpy(
        runtime,
        "import hashlib\nprint(hasattr(hashlib, 'sha256'))\n"
        "from cellguard import runtime\nh = runtime.sha256(b'ab'); h.update(b'c'); print(h.digest().hex())",
    )
    assert out.split() == ["False", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"]


def test_supervisor_ticks_wrap_at_2_pow_29(runtime):
    out = run_cpy(
        runtime,
        "from cellguard import runtime as r\n"
        "near = (1 << 29) - 10\n"
        "print(r.ticks_add(near, 20), r.ticks_diff(r.ticks_add(near, 20), near), r.ticks_diff(near, 10))\n"
        "t = r.ticks_ms(); r.sleep_ms(15); print(0 <= t < (1 << 29), r.ticks_diff(r.ticks_ms(), t) >= 14)",
    )
    assert out.split() == ["10", "20", "-20", "True", "True"]


def test_watchdog_and_reset(runtime):
    script = (
        "from cellguard import runtime\n"
        "import microcontroller\n"
        "w = runtime.watchdog(3000); w.feed(); w.feed()\n"
        "wd = microcontroller.watchdog\n"
        "print(wd.timeout, wd.mode, wd.feeds)\n"
        "runtime.reset()\n"
        "print('not reached')\n"
    )
    from harness import RuntimeFailed

    with pytest.raises(RuntimeFailed) as err:
        run_cpy(runtime, script)
    assert "exited 75" in str(err.value)
    assert "3.0 RESET 2" in str(err.value)
    assert "microcontroller.reset()" in str(err.value)
    assert "not reached" not in str(err.value)


def test_host_watchdog_and_reset_without_shim(runtime):
    out = runtime.run(
        "from cellguard import runtime\nw = runtime.watchdog(1000); w.feed()\nprint(w.fed)\n"
        "try:\n runtime.reset()\nexcept SystemExit as e:\n print('exit', e.args[0])"
    )
    assert out.split() == ["1", "exit", "75"]


def test_busio_uart_stream_on_a_pty(runtime):
    master, slave = pty.openpty()
    tty.setraw(master)
    result = {}
    script = (
        "from cellguard import runtime\n"
        "s = runtime.open_uart(None, baudrate=115200, tx='TX', rx='RX')\n"
        "print(type(s).__name__)\n"
        "print(s.readinto(bytearray(4)), s.wait_readable(20))\n"
        "s.write(b'AT\\r')\n"
        "buf = bytearray(16)\n"
        "got = b''\n"
        "while len(got) < 4 and s.wait_readable(30000):\n"
        "    n = s.readinto(buf); got += bytes(buf[:n])\n"
        "print(got)\n"
        "s.close()"
    )

    def device():
        env = {**os.environ, "CELLGUARD_SHIM_UART": os.ttyname(slave)}
        try:
            result["out"] = run_cpy(runtime, script, env=env, timeout=60)
        except Exception as exc:  # surfaced below, not lost in the thread
            result["error"] = exc

    worker = threading.Thread(target=device)
    worker.start()
    try:
        ready, _, _ = select.select([master], [], [], 60)  # the write is the event; bounds a hang
        assert ready, "the CircuitPython-path UART wrote nothing: %r" % result.get("error")
        assert os.read(master, 16) == b"AT\r"
        os.write(master, b"OK\r\n")  # the reply comes after the command, as a modem's does
        worker.join(90)
    finally:
        os.close(master)
        os.close(slave)
    name, idle, got = result["out"].strip().split("\n")
    assert name == "BusioUartStream"
    assert idle == "0 False"
    assert got == "b'OK\\r\\n'"


def test_boot_py_remounts_storage(runtime, tmp_path):
    out = run_cpy(
        runtime,
        "from cellguard import cpy_boot\nimport storage\n"
        "try:\n cpy_boot.check_writable()\nexcept cpy_boot.StorageNotWritable as e:\n print('refused:', e)\n"
        "exec(open(%r).read())\n"
        "cpy_boot.check_writable()\n"
        "print(storage.getmount('/').readonly, storage.getmount('/').remounts, storage.usb_drive_enabled)"
        % str(FIRMWARE / "boot.py"), env={**os.environ, "CELLGUARD_FS": str(tmp_path)},
    )
    refused, warning, state = out.strip().split("\n")
    assert refused.startswith("refused: CIRCUITPY is read-only to code")
    assert warning == "cgboot: no /manifest.img: RUNNING UNVERIFIED CODE FROM /lib (development fallback)"
    assert state == "False 1 True"


NVM_SCRIPT = """
import sys, microcontroller
from cellguard.cpy_boot import NvmCell
cell = NvmCell(microcontroller.nvm, 64, 16)
action = sys.argv[-1] if len(sys.argv) > 1 else ''
if action == 'write':
    print(cell.read())
    cell.write(b'first'); cell.write(b'second')
    print(cell.read())
elif action == 'tear':
    # A power cut halfway through the next write: the copy being written is garbage.
    cell.write(b'third')
    slot = 6 + 16 + 4
    newest = 64 + slot if microcontroller.nvm[64 + 3] < microcontroller.nvm[64 + slot + 3] else 64
    microcontroller.nvm[newest + 6 : newest + 9] = b'XXX'
    print(cell.read())
else:
    print(cell.read())
"""


def test_nvm_cell_survives_resets_and_torn_writes(runtime, tmp_path):
    env = {**os.environ, "CELLGUARD_SHIM_NVM": str(tmp_path / "nvm.bin")}
    first = run_cpy(runtime, NVM_SCRIPT, env=env, args=("write",)).split()
    assert first == ["None", "b'second'"]
    assert run_cpy(runtime, NVM_SCRIPT, env=env, args=("read",)).strip() == "b'second'"
    # The torn newer copy fails its check; the older copy ('second') is what a reboot sees.
    assert run_cpy(runtime, NVM_SCRIPT, env=env, args=("tear",)).strip() == "b'second'"
    assert run_cpy(runtime, NVM_SCRIPT, env=env, args=("read",)).strip() == "b'second'"


def test_main_py_reports_circuitpython(runtime, tmp_path):
    import subprocess
    import sys

    from harness import cpython_env

    source = open(FIRMWARE / "main.py").read()
    env = {**os.environ, "CELLGUARD_FS": str(tmp_path)}  # a unit with nothing flashed but the code
    if runtime.name == "micropython":
        # An RP2040's heap (the Feather's): CircuitPython compiles the firmware from .py source on
        # the board, as here, and the status page is compiled when it is first asked for.
        proc = spawn_micropython(source, extra_paths=(CPY_SHIM,), env=env, stdin=subprocess.PIPE,
                                 stdout=-1, stderr=-1, heapsize="192K")
    else:
        proc = subprocess.Popen([sys.executable, "-c", source], env=cpython_env((CPY_SHIM,), env), text=True,
                                stdin=subprocess.PIPE, stdout=-1, stderr=-1)
    out, err = proc.communicate("status\r", timeout=120)  # main.py compiles from source: slow when loaded
    assert proc.returncode == 0, out + err
    assert "on circuitpython" in out
    # No A/B loader on CircuitPython: the page shows the manifest check boot.py recorded (none here).
    assert "firmware    slot manifest  state unknown (boot.py recorded no manifest check)" in out, out


def test_sha256_without_builtin_hashlib_uses_bundled_adafruit_hashlib(runtime, tmp_path):
    # Ports built without hashlib (an RP2040 without Wi-Fi): the pinned adafruit_hashlib, bundled.
    # Compiled to .mpy, as an image carries it: from .py source its compile needs more than 128 KiB.
    from cgdev.bundle import DEVICE_LIBS, REQUIREMENTS, bundle, read_names, read_pins

    lib = tmp_path / "lib"
    bundle(lib, read_names(DEVICE_LIBS), read_pins(REQUIREMENTS), mpy=runtime.name == "micropython")
    out = run_cpy(
        runtime,
        "try:\n import hashlib\nexcept ImportError:\n print('no hashlib')\n"
        "from cellguard import runtime\n"
        "h = runtime.sha256(b'ab'); h.update(b'c'); print(h.digest().hex())\n"
        "import sys; print('adafruit_hashlib' in sys.modules)",
        env={**os.environ, "CELLGUARD_SHIM_NO_HASHLIB": "1"},
        extra_paths=(CPY_SHIM, lib),
    )
    assert out.split() == ["no", "hashlib", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "True"]


def test_verify_files_against_manifest(runtime, tmp_path):
    # CircuitPython cannot mount a verified image from a buffer: files are checked before import.
    from cgdev.bundle import DEVICE_LIBS, REQUIREMENTS, bundle, read_names, read_pins

    lib = tmp_path / "lib"
    manifest = bundle(lib, read_names(DEVICE_LIBS), read_pins(REQUIREMENTS))
    entries = [(m["file"], m["sha256"]) for m in manifest]
    script = (
        "from cellguard import cpy_boot\n"
        "entries = %r\n"
        "try:\n cpy_boot.verify_files(entries, %r)\n print('verified', len(entries))\n"
        "except cpy_boot.ImageMismatch as e:\n print('refused', e)\n"
    ) % (entries, str(lib))
    assert run_cpy(runtime, script).strip() == "verified %d" % len(entries)
    (lib / "adafruit_sht4x.py").write_text((lib / "adafruit_sht4x.py").read_text() + "\n# changed\n")
    assert run_cpy(runtime, script).strip() == "refused differs: adafruit_sht4x.py"
    (lib / "adafruit_sht4x.py").unlink()
    assert run_cpy(runtime, script).strip() == "refused missing: adafruit_sht4x.py"


def test_shipped_usb_has_no_repl_and_a_status_port(runtime):
    out = run_cpy(
        runtime,
        "from cellguard import cpy_boot\nimport usb_cdc, supervisor\n"
        "print(cpy_boot.status_port())\n"
        "cpy_boot.prepare_usb(shipped=False)\nprint(usb_cdc.console is not None, supervisor.runtime.autoreload)\n"
        "cpy_boot.prepare_usb(shipped=True)\n"
        "print(usb_cdc.console, usb_cdc.data is not None, supervisor.runtime.autoreload)\n"
        "s = cpy_boot.status_port()\n"
        "usb_cdc.data.host += b'status\\r'\n"
        "buf = bytearray(16)\nprint(s.wait_readable(100), bytes(buf[:s.readinto(buf)]))\n"
        "s.write(b'ok\\r\\n'); print(bytes(usb_cdc.data.sent))",
    )
    assert out.strip().split("\n") == [
        "None",
        "True True",
        "None True False",
        "True b'status\\r'",
        "b'ok\\r\\n'",
    ]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("dialect", ["nrf91", "bg96"])
def test_modem_driver_over_busio_uart(runtime, dialect):
    # The modem driver over CircuitPython's busio.UART stream (the shim's, on the emulator's pty):
    # attach and a binary UDP round trip, as the MicroPython tests do over machine.UART's stream.
    from modem_fixtures import driver_script, emulated_modem, udp_echo_server

    body = """
attach()
print('STREAM', type(engine._stream).__name__)
s = m.open_udp()
s.sendto(bytes(range(256)), '127.0.0.1', ECHO_PORT)
got = s.recvfrom(3000)
print('ECHO', got is not None and got[0] == bytes(range(256)))
s.close()
"""
    with emulated_modem(dialect) as emu, udp_echo_server() as echo:
        script = driver_script(emu, body, echo.port).replace(
            "runtime.open_uart(PTY)", "runtime.open_uart(PTY, tx='TX', rx='RX')"
        )
        out = run_cpy(
            runtime, script, heapsize="256K", timeout=60, env={**os.environ, "CELLGUARD_SHIM_UART": emu.path}
        )
    assert "STREAM BusioUartStream" in out, out
    assert "ECHO True" in out, out


# ---- boot.py on CircuitPython: the application's files against the signed manifest ----------------
@pytest.fixture(scope="module")
def cpy_flash(tmp_path_factory):
    """What tools/flash.py writes to a CircuitPython unit (development: it trusts its signing key)."""
    import argparse

    from cgdev import flash

    tmp = tmp_path_factory.mktemp("cpy-flash")
    args = argparse.Namespace(signing_key=tmp / "dev.pem", production=False, trust_signing_key=False)
    files, outcome = flash.circuitpython_files(args)
    other = argparse.Namespace(signing_key=tmp / "other.pem", production=False, trust_signing_key=False)
    foreign = flash.circuitpython_files(other)[0]["manifest.img"]  # same files, a key the unit does not trust
    return files, outcome, foreign


def _unit(tmp_path, files):
    dev = tmp_path / "dev"
    for path, data in files.items():
        (dev / path).parent.mkdir(parents=True, exist_ok=True)
        (dev / path).write_bytes(data)
    return dev


def _boot(runtime, dev):
    # The unit's own /lib first (its cgboot trusts the signing key), as on the board.
    return run_cpy(
        runtime, "exec(open(%r).read())\nprint('BOOTED', boot_result)" % str(dev / "boot.py"),
        extra_paths=(CPY_SHIM, dev / "lib"), env={**os.environ, "CELLGUARD_FS": str(dev)}, heapsize="256K",
    )


def test_flash_gives_circuitpython_files_and_a_manifest_not_a_slot(cpy_flash):
    files, outcome, _ = cpy_flash
    assert "slots/a.img" not in files
    assert outcome.startswith("slot image skipped: no VfsRom on CircuitPython")
    assert {"lib/cellguard/app.py", "lib/adafruit_sht4x.py", "lib/cgboot/manifest.py", "manifest.img"} <= set(files)


@pytest.mark.timeout(120)
def test_boot_py_verifies_the_files_against_the_signed_manifest(runtime, tmp_path, cpy_flash):
    files, _, _ = cpy_flash
    dev = _unit(tmp_path, files)
    out = _boot(runtime, dev)
    assert "files verified against the signed manifest" in out, out
    assert "UNVERIFIED" not in out
    assert out.strip().splitlines()[-1].startswith("BOOTED ")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("damage, reason", [
    ("changed", "differs: lib/cellguard/app.py"),
    ("removed", "missing: lib/adafruit_sht4x.py"),
    ("foreign", "unknown_key"),
])
def test_boot_py_refuses_a_mismatch_loudly(runtime, tmp_path, cpy_flash, damage, reason):
    from harness import RuntimeFailed

    files, _, foreign = cpy_flash
    dev = _unit(tmp_path, files)
    if damage == "changed":
        (dev / "lib/cellguard/app.py").write_bytes(files["lib/cellguard/app.py"] + b"\nSTOLEN = True\n")
    elif damage == "removed":
        (dev / "lib/adafruit_sht4x.py").unlink()
    else:
        (dev / "manifest.img").write_bytes(foreign)
    with pytest.raises(RuntimeFailed) as err:
        _boot(runtime, dev)
    text = str(err.value)
    assert "exited 78" in text
    assert "cgboot: REFUSING TO RUN: " in text and reason in text
    assert "BOOTED" not in text  # nothing after the check ran: not the storage set-up, not the app


def test_boot_py_without_a_manifest_says_unverified(runtime, tmp_path, cpy_flash):
    files, _, _ = cpy_flash
    dev = _unit(tmp_path, {p: d for p, d in files.items() if p != "manifest.img"})
    out = _boot(runtime, dev)
    assert "cgboot: no /manifest.img: RUNNING UNVERIFIED CODE FROM /lib" in out
    assert "BOOTED None" in out


SHIPPED = """
import json, os
with open(%(fs)r + '/state/console.json', 'w') as f:
    json.dump({'locked': True}, f)
exec(open(%(boot)r).read())
import storage, supervisor, usb_cdc
print('USB', usb_cdc.console, usb_cdc.data is not None, storage.usb_drive_enabled, supervisor.runtime.autoreload)
from cellguard import console
read_byte, write = console._stdio(20)
print('IDLE', read_byte())
usb_cdc.data.host += b'version\\r'
c = console.Console(write, True)
for _ in range(8):
    c.feed(read_byte())
print('SENT', bytes(usb_cdc.data.sent).decode().split(chr(10))[1])
"""


@pytest.mark.timeout(120)
def test_shipped_unit_takes_usb_from_the_lock_and_runs_the_console_on_the_data_cdc(runtime, tmp_path, cpy_flash):
    # A shipped unit as tools/flash.py leaves it (a locked unit runs only what its manifest lists).
    # 256K: boot.py and the console share one VM here, compiled from source (a board resets the VM
    # between boot.py and main.py, and runs .mpy).
    dev = _unit(tmp_path, cpy_flash[0])
    (dev / "state").mkdir()
    out = run_cpy(runtime, SHIPPED % {"fs": str(dev), "boot": str(dev / "boot.py")},
                  extra_paths=(CPY_SHIM, dev / "lib"), env={**os.environ, "CELLGUARD_FS": str(dev)}, heapsize="256K")
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines() if line.split(" ", 1)[0] in ("USB", "IDLE", "SENT"))
    assert lines["USB"] == "None True False False"  # no REPL CDC, a data CDC, drive hidden, no auto-reload
    assert lines["IDLE"] == "None"  # nothing waiting: the poll returns, the application gets its turn
    assert lines["SENT"].startswith("cellguard ") and "  slot " in lines["SENT"]  # the `version` answer


STOPPED_READING = """
import json, os
os.mkdir(%(fs)r + '/state')
with open(%(fs)r + '/state/console.json', 'w') as f:
    json.dump({'locked': True}, f)
import usb_cdc
usb_cdc.enable(console=False, data=True)
usb_cdc.data.room = 300  # the host's buffer: it takes this much, then stops reading
usb_cdc.data.host += b'status --json\\r' * 200
from cellguard import console, consoleport, status
read_byte, write = consoleport.stdio(20)
out = consoleport.Output(write)
c = console.Console(out.write, True, refresh=lambda: None)
turns = []
def idle():
    turns.append(1)
    if len(turns) == 30:
        raise SystemExit
status.snapshot = lambda: {}
try:
    console.serve(c, read_byte, idle, out)
except SystemExit:
    pass
print('TURNS', len(turns), 'SENT', len(usb_cdc.data.sent), 'LEFT', len(usb_cdc.data.host))
"""


def test_shipped_console_never_waits_for_a_host_that_stopped_reading(runtime, tmp_path):
    # The data CDC of a shipped unit whose host stops reading: the console's writes take what the
    # host's buffer holds and the application keeps getting its turns (item 1 on CircuitPython).
    out = run_cpy(runtime, STOPPED_READING % {"fs": str(tmp_path)}, env={**os.environ, "CELLGUARD_FS": str(tmp_path)},
                  timeout=120)
    words = out.split()
    assert words[words.index("TURNS") + 1] == "30", out
    assert words[words.index("SENT") + 1] == "300", out


def test_unlocked_console_waits_on_supervisor_not_select(runtime, tmp_path):
    script = (
        "import supervisor\nfrom cellguard import console\n"
        "turns = []\nconsole.main(idle=lambda: turns.append(1))\n"
        "print('END', supervisor.runtime.polls > 0)\n"
    )
    from harness import cpython_env, micropython_cmd, micropython_env

    env = {**os.environ, "CELLGUARD_FS": str(tmp_path)}
    if runtime.name == "micropython":
        cmd, env = [*micropython_cmd(), "-c", script], micropython_env((CPY_SHIM,), env)
    else:
        import sys

        cmd, env = [sys.executable, "-c", script], cpython_env((CPY_SHIM,), env)
    import subprocess

    proc = subprocess.run(cmd, input="version\r", capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "cellguard " in proc.stdout and "  slot " in proc.stdout  # the `version` answer
    assert proc.stdout.strip().endswith("END True")  # the end of input ended an unlocked console


# ---- a locked unit runs nothing unverified; what CircuitPython would run instead of main.py ------
@pytest.mark.timeout(120)
def test_locked_unit_without_a_manifest_is_refused(runtime, tmp_path, cpy_flash):
    # An unlocked unit without /manifest.img warns and runs /lib (above); a locked one must not.
    from harness import RuntimeFailed

    files, _, _ = cpy_flash
    dev = _unit(tmp_path, {p: d for p, d in files.items() if p != "manifest.img"})
    (dev / "state").mkdir()
    (dev / "state" / "console.json").write_text('{"locked": true}')
    with pytest.raises(RuntimeFailed) as err:
        _boot(runtime, dev)
    text = str(err.value)
    assert "exited 78" in text and "cgboot: REFUSING TO RUN: no /manifest.img on a locked unit" in text
    assert "UNVERIFIED" not in text and "BOOTED" not in text


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["code.py", "code.txt"])
def test_boot_py_refuses_a_start_up_file_that_would_run_instead_of_main_py(runtime, tmp_path, cpy_flash, name):
    # CircuitPython runs code.txt or code.py before main.py (a fresh CIRCUITPY ships a code.py).
    from harness import RuntimeFailed

    dev = _unit(tmp_path, cpy_flash[0])
    (dev / name).write_text("print('hello world')\n")
    with pytest.raises(RuntimeFailed) as err:
        _boot(runtime, dev)
    assert "cgboot: REFUSING TO RUN: unsigned %s would run instead of main.py" % name in str(err.value)


def test_fresh_board_with_only_boot_py_becomes_writable_for_flash(runtime, tmp_path):
    # Only boot.py on CIRCUITPY (copied by hand, docs/flashing.md): the application does not import
    # (here a stand-in package that fails), and boot.py still remounts so flash.py can write.
    dev = tmp_path / "dev"
    (dev / "lib" / "cellguard").mkdir(parents=True)
    (dev / "lib" / "cellguard" / "__init__.py").write_text("raise ImportError('not flashed yet')\n")
    (dev / "boot.py").write_bytes((FIRMWARE / "boot.py").read_bytes())
    out = run_cpy(runtime, "exec(open(%r).read())\nimport storage\nprint('RO', storage.getmount('/').readonly)"
                  % str(dev / "boot.py"), extra_paths=(CPY_SHIM, dev / "lib"),
                  env={**os.environ, "CELLGUARD_FS": str(dev)}, heapsize="256K")
    assert "boot: CIRCUITPY writable by code (no application yet)" in out, out
    assert out.strip().splitlines()[-1] == "RO False"


# ---- the manifest check on the status page ---------------------------------------------------------
PUBLISH = """
from cellguard import cpy_boot, status
cpy_boot.publish_manifest_result(status)
print('PAGE', status.get('boot', 'slot'), '|', status.get('boot', 'state'), '|', status.get('firmware', 'image_version'))
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("with_manifest", [True, False])
def test_status_page_shows_the_manifest_check_after_the_vm_restart(runtime, tmp_path, cpy_flash, with_manifest):
    # boot.py saves the result (CircuitPython restarts the VM before main.py); a new process reads it.
    files, _, _ = cpy_flash
    dev = _unit(tmp_path, files if with_manifest else {p: d for p, d in files.items() if p != "manifest.img"})
    _boot(runtime, dev)
    out = run_cpy(runtime, PUBLISH, extra_paths=(CPY_SHIM, dev / "lib"), env={**os.environ, "CELLGUARD_FS": str(dev)})
    page = out.strip().splitlines()[-1]
    if with_manifest:
        # the image's version as imgtool writes it (major.minor.revision+build), as for a slot image
        version = (FIRMWARE / "lib" / "cellguard" / "__init__.py").read_text().split('VERSION = "')[1].split('"')[0] + "+0"
        count = sum(1 for p in files if p == "main.py" or p.startswith(("lib/cellguard/", "lib/adafruit_", "lib/BUNDLE")))
        assert page == "PAGE manifest | verified (manifest v%s, %d files) | %s" % (version, count, version)
    else:
        assert page == "PAGE manifest | unverified (no /manifest.img; development fallback to /lib) | None"


def test_status_page_without_a_recorded_check_says_unknown(runtime, tmp_path):
    out = run_cpy(runtime, PUBLISH, env={**os.environ, "CELLGUARD_FS": str(tmp_path)})
    assert out.strip().splitlines()[-1] == "PAGE manifest | unknown (boot.py recorded no manifest check) | None"


UPDATE_OFFER = """
from cellguard import status, updates
on_command = updates.handler(None, reset=lambda: None)
on_command(('update_offer',))
print('LOG', status.events()[-2][1])
"""


def test_an_update_offer_on_circuitpython_says_there_is_no_ota(runtime, tmp_path):
    # No VfsRom, no slots: the refusal names the reason, not "unverified development code".
    out = run_cpy(runtime, UPDATE_OFFER, env={**os.environ, "CELLGUARD_FS": str(tmp_path)})
    assert out.strip().splitlines()[-1] == (
        "LOG ERROR update: refused, CircuitPython has no over-the-air updates (re-flash with tools/flash.py)")
