"""The boot part's lockdown (cgboot.lockdown) and what a technician's cellguard status makes of it:
a locked unit with nothing verified never runs /lib, answers every line with its reason, and the
status tool says "the unit is in lockdown: <reason>" (exit 6). Runs on the MicroPython unix port
and CPython; the CircuitPython stdio through the test shim."""

import json
import os
import subprocess
import sys

import pytest
from harness import FIRMWARE, MICROPYTHON_RT, MP_SUPPORT, cpython_env, micropython_cmd, micropython_env

CPY_SHIM = MP_SUPPORT / "cpy_shim"
BOOT_PY_HEAP = "256K"  # boot.py compiles cgboot from source here; a board has it frozen

pytestmark = pytest.mark.timeout(60)


def _proc(runtime, script, fs, stdin_text, extra_paths=()):
    """Run `script` with `stdin_text` on its stdin; (exit code, stdout + stderr)."""
    env = {**os.environ, "CELLGUARD_FS": str(fs)}
    if runtime.name == "micropython":
        cmd, env = [*micropython_cmd(BOOT_PY_HEAP), "-c", script], micropython_env(extra_paths, env)
    else:
        cmd, env = [sys.executable, "-c", script], cpython_env(extra_paths, env)
    proc = subprocess.run(cmd, input=stdin_text, capture_output=True, text=True, timeout=40, env=env)
    return proc.returncode, proc.stdout + proc.stderr


def _lock(fs, locked=True):
    (fs / "state").mkdir(parents=True, exist_ok=True)
    (fs / "state" / "console.json").write_text(json.dumps({"locked": locked}))


# boot.py with a one-second lockdown (a board waits RETRY_S = 300 s before it resets and retries).
BOOT_SHORT_HOLD = "from cgboot import lockdown\nlockdown.RETRY_S = 1\nexec(open(%r).read())\nprint('MAIN WOULD RUN')\n"


def test_locked_unit_without_a_verified_image_never_runs_lib(tmp_path):
    # boot.py's MicroPython path (the A/B loader; CPython takes the CircuitPython path). No slot holds a verified image and /lib/cellguard is there (the repo's): an unlocked unit would
    # fall back to it; a locked one holds the console in lockdown and resets (exit 75 on a host).
    _lock(tmp_path)
    code, out = _proc(MICROPYTHON_RT, BOOT_SHORT_HOLD % str(FIRMWARE / "boot.py"), tmp_path, "status\r\nversion\n")
    assert code == 75, out
    assert "RUNNING UNVERIFIED" not in out and "MAIN WOULD RUN" not in out
    assert "console locked; the firmware cannot run (no verified image in either slot)" in out
    # every input line gets the refusal, with the reason
    assert out.count("lockdown (no verified image in either slot): error: input ignored (console locked)") == 2


def test_unlocked_unit_without_a_verified_image_still_falls_back(tmp_path):
    _lock(tmp_path, locked=False)
    code, out = _proc(MICROPYTHON_RT, BOOT_SHORT_HOLD % str(FIRMWARE / "boot.py"), tmp_path, "")
    assert code == 0, out
    assert "RUNNING UNVERIFIED CODE FROM /lib" in out and "MAIN WOULD RUN" in out


HOLD = """
from cgboot import lockdown
lockdown.hold(%r, retry_s=1)
"""


def test_a_burst_without_a_line_end_gets_one_refusal(runtime, tmp_path):
    code, out = _proc(runtime, HOLD % "test reason", tmp_path, "\x03\x03\x01\x04")
    assert code == 75, out
    assert out.count("lockdown (test reason): error: input ignored (console locked)") == 1


def test_reason_is_one_short_line(runtime, tmp_path):
    code, out = _proc(runtime, HOLD % ("two\nlines " + "x" * 300), tmp_path, "\n")
    assert code == 75, out
    refusal = [line for line in out.splitlines() if line.startswith("lockdown (")]
    assert refusal == ["lockdown (two lines %s): error: input ignored (console locked)" % ("x" * 90)]


CPY_HOLD = """
import usb_cdc
from cgboot import lockdown
%s
lockdown.hold('main.py failed: ImportError()', retry_s=1)
"""


@pytest.mark.parametrize("shipped", [True, False])
def test_circuitpython_lockdown_uses_the_data_cdc_or_supervisor_not_select(runtime, tmp_path, shipped):
    # A shipped unit's console is the data CDC (boot.py enabled it); an unlocked one reads stdin,
    # waiting on supervisor.runtime.serial_bytes_available. Either way no select.poll on stdin.
    setup = ("usb_cdc.enable(console=False, data=True)\nusb_cdc.data.host += b'status\\r'\n"
             "import sys\nsys.modules['select'] = None\n") if shipped else (
             "import sys\nsys.modules['select'] = None\n"
             "import supervisor\nsupervisor.runtime.__class__.serial_bytes_available = property(lambda s: 1)\n")
    script = CPY_HOLD % setup
    if shipped:  # what the device wrote on the data CDC, printed when the reset ends the process
        script = script.replace("lockdown.hold(", "try:\n    lockdown.hold(") + (
            "except SystemExit:\n    print('DATA', bytes(usb_cdc.data.sent))\n    raise\n")
    code, out = _proc(runtime, script, tmp_path, "" if shipped else "status\r", extra_paths=(CPY_SHIM,))
    assert code == 75, out
    line = "lockdown (main.py failed: ImportError()): error: input ignored (console locked)"
    if shipped:
        data = out.split("DATA ", 1)[1]
        assert line in data and "console locked; the firmware cannot run" in data
    else:
        assert line in out


def test_status_tool_says_the_unit_is_in_lockdown(tmp_path):
    # cellguard status against a pty whose other end is a real lockdown (MicroPython unix port).
    import pty
    import tty

    from cgdev import status as status_tool

    master, slave = pty.openpty()
    tty.setraw(slave)
    env = micropython_env((), {**os.environ, "CELLGUARD_FS": str(tmp_path)})
    proc = subprocess.Popen([*micropython_cmd(), "-c", HOLD.replace("retry_s=1", "retry_s=30") % "slot a: bad_signature"],
                            stdin=master, stdout=master, stderr=subprocess.DEVNULL, env=env)
    try:
        port = os.ttyname(slave)  # the technician's end; the unit holds the pty's master side
        with pytest.raises(status_tool.StatusToolError) as err:
            # The lockdown's refusal ends the wait; the bound is for a loaded machine's slow unit.
            with status_tool.ConsoleClient(port, timeout=20) as client:
                client.attach()
        assert err.value.code == status_tool.EXIT_LOCKDOWN == 6
        assert str(err.value).startswith("the unit is in lockdown: slot a: bad_signature.")
        assert "does not answer" not in str(err.value)
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
        os.close(slave)


def test_a_flood_with_a_reader_that_does_not_read_never_holds_the_lockdown(runtime, tmp_path):
    # Lines pour in (from a file: always readable) and nobody reads the port (a pipe never read,
    # 64 KiB of room): the loop still resets on time. At most a few refusals a second are written,
    # one line says how many went unanswered, and nothing is written the port would not take.
    flood = tmp_path / "flood"
    flood.write_bytes(b"status --json\r" * 20_000)
    env = {**os.environ, "CELLGUARD_FS": str(tmp_path)}
    script = HOLD % "test reason"
    if runtime.name == "micropython":
        cmd, env = [*micropython_cmd(BOOT_PY_HEAP), "-c", script], micropython_env((), env)
    else:
        cmd, env = [sys.executable, "-c", script], cpython_env((), env)
    with flood.open("rb") as stdin:
        proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        try:
            code = proc.wait(timeout=20)  # the old loop blocked on its 700-odd-th refusal for ever
        finally:
            proc.kill()
            out = proc.stdout.read().decode()
            proc.stdout.close()
    assert code == 75, out[-500:]
    assert out.count("lockdown (test reason): error: input ignored (console locked)") <= 2 * 8
    assert "line(s) refused without an answer (console busy or not read)" in out


class _Reset(Exception):
    pass


@pytest.mark.parametrize("ms_per_byte", [1, 5, 20])
def test_a_flood_that_outlasts_the_hold_is_counted_before_the_reset(ms_per_byte):
    # A chip that reads slowly (each byte costs ms_per_byte on its clock) under a flood that never
    # falls quiet: the hold ends before its first second turns, and the count of what went
    # unanswered is still written before the reset. (A loaded CI machine ran the MicroPython flood
    # above this slowly, and the line was missing: it was written only when the port fell quiet or
    # a second turned.)
    from cgboot import lockdown

    flood = b"status --json\r"
    now, n, out = [0], [0], []

    def read_byte(timeout_ms):
        now[0] += ms_per_byte
        b = flood[n[0] % len(flood)]
        n[0] += 1
        return b

    def clock():  # time passes between reads too: the second's mark lands after the hold's start
        now[0] += 1
        return now[0]

    def reset():
        raise _Reset

    with pytest.raises(_Reset):
        lockdown.hold("test reason", retry_s=1, read_byte=read_byte, write=out.append, reset=reset, clock=clock)
    lines = n[0] // len(flood)
    refusals = [line for line in out if line.startswith("lockdown (test reason)")]
    dropped = [line for line in out if "refused without an answer" in line]
    assert 1 <= len(refusals) <= 8
    if lines > len(refusals):
        assert dropped and dropped[-1] == lockdown.DROPPED % (lines - len(refusals) - _counted(dropped[:-1]))
    else:
        assert not dropped


def _counted(lines):
    return sum(int(line.split()[1]) for line in lines)
