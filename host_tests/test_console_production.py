"""Production lock on the virtual board: the REPL is unreachable; service actions need the response."""

import itertools
import json
import subprocess
import time

import pytest
import serial
from mpremote.transport import TransportExecError
from mpremote.transport_serial import SerialTransport
from vboard import MPREMOTE, Board, flash, run_tool

pytestmark = pytest.mark.timeout(150)

PROMPT = b"cellguard> "
# Reads end at the marker they wait for; this bound only stops a hang (a loaded CI machine's virtual
# board may take seconds to answer).
ANSWER_S = 30


@pytest.fixture
def locked(tmp_path):
    board = Board(tmp_path)
    key = tmp_path / "master.key"
    try:
        proc = flash(board, key, "--production", "--trust-signing-key")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield board, key
    finally:
        board.stop()


def console_answers(port: str) -> bytes:
    with serial.Serial(port, timeout=ANSWER_S) as s:
        s.reset_input_buffer()
        s.write(b"\x02\rversion\r")  # Ctrl-B first: leave the raw-REPL refusal if a probe left it there
        out = s.read_until(b"board virtual\r\n" + PROMPT)
        if b"board virtual" not in out and b"console busy" in out:
            # Sent while the console was still dropping a storm's lines (it says so): ask again.
            s.write(b"\rversion\r")
            out += s.read_until(b"board virtual\r\n" + PROMPT)
    assert b"cellguard 0.1.0" in out, out
    return out


REASON = "locked console: this production unit has no Python REPL; open it with `cellguard status"


def test_repl_escape_attempts_fail(locked, tmp_path):
    board, key = locked
    # 1. The real mpremote CLI, with no deadline of its own: it fails at once and says why (it used to
    # wait for ever for a raw-REPL banner), and its code never runs. The timeout only bounds a hang.
    for args in (("exec", "open('pwned','w').close()"), ("fs", "ls")):
        proc = subprocess.run([str(MPREMOTE), "connect", board.port, *args], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert REASON in proc.stdout + proc.stderr and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    # 2. mpremote's transport: the raw REPL "opens", and every block of code is refused with the reason.
    t = SerialTransport(board.port, timeout=1)
    try:
        t.enter_raw_repl(soft_reset=True, timeout_overall=30)
        with pytest.raises(TransportExecError, match="locked console"):
            t.exec("open('pwned','w').close()")
        t.exit_raw_repl()
    finally:
        t.close()
    # 3. Raw bytes: Ctrl-C storms, soft reset, raw REPL, raw paste, friendly REPL; Ctrl-B leaves the refusal.
    seen = b""
    with serial.Serial(board.port, timeout=60) as s:
        for probe in (b"\x03" * 20, b"\x04", b"\r\x01import os\x04", b"\x05A\x01print(1)\x04", b"\x02", b"\x03\x03\x01\x04"):
            s.write(probe + b"\x02")
            out = b""
            # The console's answer to `version` marks the end of this probe. A storm's excess lines are
            # dropped by the console's bound per turn (one line says so), `version` with them: ask again.
            s.timeout = 5
            for _ in range(24):
                s.write(b"\rversion\r")
                out += s.read_until(b"board virtual\r\n" + PROMPT)
                if out.endswith(b"board virtual\r\n" + PROMPT):
                    break
            assert b">>> " not in out and b"Traceback" not in out and b"cellguard 0.1.0" in out, (probe, out)
            seen += out
    for answer in (b"ignored (console locked)", b"locked: no soft reboot", REASON.encode()):
        assert answer in seen, seen
    console_answers(board.port)
    # With the service response the REPL opens, and nothing the attempts sent ever ran.
    opened = run_tool("status", "--port", board.port, "--service", "open-repl", "--service-key", str(key))
    assert opened.returncode == 0, opened.stdout + opened.stderr
    # `resume`: no soft reset, which would lock the console again.
    assert "pwned" not in board.mpremote("resume", "fs", "ls").stdout


def test_unauthenticated_service_commands_are_refused_and_logged(locked, tmp_path):
    board, _key = locked
    with serial.Serial(board.port, timeout=ANSWER_S) as s:
        s.write(b"\rservice wipe\r")
        refusal = s.read_until(b"challenge (cellguard status --service wipe)\r\n" + PROMPT)
        # At once: the back-off after a refused attempt refuses it before anything is checked.
        s.write(b"service open-repl " + b"ab" * 32 + b"\r")
        refusal += s.read_until(b"in a row\r\n" + PROMPT)
        assert b"service open-repl refused: service actions refused for 2 s after 1 refused attempt(s)" in refusal
        s.write(b"service open-repl " + b"ab" * 32 + b"\r")  # still no challenge: refused, counted
        refusal += s.read_until(b"\r\n" + PROMPT)
        for _ in range(40):  # the back-off (2 s) ends: an answer with no challenge is refused as such
            if b"no challenge issued" in refusal:
                break
            time.sleep(0.25)  # polling the unit's own clock: refusals during the back-off cost nothing
            s.write(b"service open-repl " + b"ab" * 32 + b"\r")
            refusal += s.read_until(b"\r\n" + PROMPT)
    assert b"service wipe refused" in refusal and b"service open-repl refused: no challenge issued" in refusal
    other = tmp_path / "not-the-master.key"
    other.write_text("11" * 32)
    wrong = run_tool("status", "--port", board.port, "--service", "wipe", "--service-key", str(other))
    assert wrong.returncode == 4 and "refused" in wrong.stderr  # the back-off (4 s now), or a wrong response
    log = run_tool("status", "--port", board.port, "--command", "log")
    assert log.returncode == 0
    for reason in ("service wipe refused: not authenticated", "service open-repl refused: no challenge issued"):
        assert reason in log.stdout
    assert "security record (kept on the unit):" in log.stdout
    # Still locked, still serving.
    console_answers(board.port)


def test_service_wipe_with_the_master_key(locked):
    board, key = locked
    done = run_tool("status", "--port", board.port, "--service", "wipe", "--service-key", str(key))
    assert done.returncode == 0 and "wipe done" in done.stdout
    status = json.loads(run_tool("status", "--port", board.port, "--json").stdout)
    assert any("wiped" in e[1] for e in status["events"])


def test_no_command_ever_prints_a_key(locked, tmp_path):
    from cgdev import status as status_tool

    board, key = locked
    master = key.read_text().strip()
    snap = json.loads(run_tool("status", "--port", board.port, "--json").stdout)
    device_key = status_tool.device_service_key(bytes.fromhex(master), snap["device"]["id"]).hex()
    outputs = [flash(board, key, "--production", "--trust-signing-key", "--json")]
    outputs += [run_tool("status", "--port", board.port, *a)
                for a in ((), ("--json",), ("--command", "version"), ("--command", "log"), ("--command", "help"))]
    with serial.Serial(board.port, timeout=ANSWER_S) as s:
        s.write(b"\rservice challenge\rservice wipe\rstatus\r")
        raw = s.read_until(b"errors")
        raw += s.read_until(PROMPT)
    text = "".join(p.stdout + p.stderr for p in outputs) + raw.decode(errors="replace")
    assert "challenge cg-" in text and "cellguard 0.1.0" in text
    for secret in (master, device_key):
        assert secret not in text.lower()


def test_ctrl_c_storm_during_power_on_does_not_open_the_repl(locked):
    board, _key = locked
    board.stop()  # power off; power on with the same flash, and hammer the port while boot.py runs
    again = Board(board.workdir, board.image)
    seen = bytearray()
    try:
        answered = lambda: b"ignored (console locked)" in seen or b"no soft reboot" in seen  # noqa: E731
        with serial.Serial(again.port, timeout=0.05) as s:
            # 40 rounds (2 s) at least, and on until the unit has answered: a loaded machine may not
            # have reached boot.py by then. The bound only stops a hang.
            deadline = time.monotonic() + 90
            for n in itertools.count():
                if n >= 40 and (answered() or time.monotonic() > deadline):
                    break
                s.write(b"\x03\x03\x01\x04")
                seen.extend(s.read(4096))
        # Ctrl-A gets mpremote's banner and a refusal (cgboot.rawrefusal), never the REPL itself
        assert b">>> " not in seen and b"Traceback" not in seen, bytes(seen[-300:])
        assert answered(), bytes(seen[-300:])
        console_answers(again.port)
    finally:
        again.stop()


LOCKDOWN_REASON = "locked console: the unit is in lockdown (no verified image in either slot)"
# A line's answer in lockdown: the refusal, or (when the second's bound was spent) the count of
# lines it dropped, written when the port falls quiet.
LINE_ANSWERS = (b"(console locked)\r\n", b"(console busy or not read)\r\n")
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n>"
# Probes and what ends each one's answer. Answers to the raw-REPL handshake are never dropped (they
# wait for the next second), so each raw step is sent once its answer came, as mpremote does.
LOCKDOWN_PROBES = (
    (b"\x03" * 20, LINE_ANSWERS),                   # a Ctrl-C storm: one line's answer
    (b"\x04", LINE_ANSWERS),                        # soft reset: nothing is reset
    (b"\r\x01", (RAW_BANNER,)),                     # raw REPL: the banner, no REPL
    (b"import os\x04", (b"\x04>",)),                 # a block of code: refused with the reason
    (b"\x05A\x01", (b"R\x00",)),                     # raw paste: not supported
    (b"print(1)\x04", (b"\x04>",)),
    (b"\x03\x03\x04", (b"no soft reboot\r\n" + RAW_BANNER,)),
    (b"\x02", LINE_ANSWERS),                        # Ctrl-B: back to refusing lines
    (b"\rstatus\r", LINE_ANSWERS),
)


def _read_answer(s, endings) -> bytes:
    out = b""
    while not out.endswith(endings):
        c = s.read(1)
        assert c, ("no answer", endings, out)  # the port's timeout: a hang, not an answer
        out += c
    return out


def test_locked_unit_whose_image_does_not_verify_keeps_the_repl_closed(locked):
    # No slot verifies (slot a corrupted, no slot b) and a production unit has no /lib/cellguard:
    # boot.py and main.py cannot import the application, and the boot part's lockdown holds the port.
    board, key = locked
    opened = run_tool("status", "--port", board.port, "--service", "open-repl", "--service-key", str(key))
    assert opened.returncode == 0, opened.stdout + opened.stderr
    board.mpremote("resume", "exec", "f = open('slots/a.img', 'r+b'); f.seek(200); f.write(b'rot'); f.close()\n"
                   "import os\ntry:\n os.remove('slots/b.img')\nexcept OSError:\n pass")
    board.stop()  # power off; power on with the corrupted flash
    again = Board(board.workdir, board.image)
    try:
        # The bound is generous: a loaded CI machine boots the virtual board and hashes the slot slowly.
        with serial.Serial(again.port, timeout=60) as s:
            # The lockdown banner may come before the port is open (pyserial flushes its input on
            # open), so ask: every line gets the refusal, with the reason.
            s.write(b"\r")
            first = s.read_until(b"(console locked)\r\n")
            assert b"lockdown (no verified image in either slot): error: input ignored" in first, first
            seen = b""
            for probe, endings in LOCKDOWN_PROBES:
                s.write(probe)
                out = _read_answer(s, endings)
                assert b">>> " not in out and b"Traceback" not in out, (probe, out)
                seen += out
            assert LOCKDOWN_REASON.encode() in seen and b"R\x00" in seen, seen
        # The real mpremote, with no deadline of its own, fails at once and says why; nothing runs.
        proc = again.mpremote("exec", "open('pwned','w').close()", check=False)
        assert proc.returncode == 1 and LOCKDOWN_REASON in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        # A read timeout of 5 s, as cellguard flash has: an answer over the lockdown's bound of writes
        # a second (mpremote above spent this second's) comes when the next second begins.
        t = SerialTransport(again.port, timeout=5)
        try:
            t.enter_raw_repl(soft_reset=True, timeout_overall=30)
            with pytest.raises(TransportExecError, match="in lockdown"):
                t.exec("open('pwned','w').close()")
            t.exit_raw_repl()
        finally:
            t.close()
    finally:
        again.stop()
    assert b"pwned" not in again.image.read_bytes()


def test_the_challenge_names_the_device_id_the_page_shows(locked):
    # One id everywhere: the technician reads the page's device id to the service desk, and the
    # challenge (whose answer is keyed for that id) names the same one.
    board, key = locked
    snap = json.loads(run_tool("status", "--port", board.port, "--json").stdout)
    with serial.Serial(board.port, timeout=ANSWER_S) as s:
        s.write(b"\rservice challenge\r")
        out = s.read_until(b"challenge cg-")
        out = (out + s.read_until(b"\r\n" + PROMPT)).decode()
    words = out.split("challenge ")[-1].split()
    assert words[0] == snap["device"]["id"], (out, snap["device"])
    assert not any("service record is for device" in e for _, e in snap["events"]), snap["events"]
    done = run_tool("status", "--port", board.port, "--service", "open-repl", "--service-key", str(key))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_reset_locks_a_repl_a_service_response_opened(locked):
    board, key = locked
    for reset in ("mpremote soft-reset", "Ctrl-D at the friendly REPL"):
        opened = run_tool("status", "--port", board.port, "--service", "open-repl", "--service-key", str(key))
        assert opened.returncode == 0, opened.stdout + opened.stderr
        assert "ok" in board.mpremote("resume", "exec", "print('ok')").stdout  # the REPL is open
        if reset.startswith("mpremote"):
            # The soft reset from the raw REPL runs boot.py alone: on a locked unit that is the console.
            try:
                proc = board.mpremote("soft-reset", "exec", "open('pwned','w').close()", check=False, timeout=10)
                assert proc.returncode != 0, proc.stdout
            except subprocess.TimeoutExpired:
                pass  # mpremote waits for a raw REPL that never comes back: killed, as intended
        else:
            with serial.Serial(board.port, timeout=ANSWER_S) as s:
                s.write(b"\r\x02")  # leave the raw REPL mpremote left: the friendly REPL's banner
                s.read_until(b">>> ")
                s.write(b"\x04")
                assert b"MPY: soft reboot" in s.read_until(b"soft reboot\r\n")
        out = console_answers(board.port)
        assert b">>> " not in out and b"raw REPL" not in out
        with serial.Serial(board.port, timeout=ANSWER_S) as s:  # and the escape bytes are refused again
            s.write(b"\x03\x01")
            assert b"ignored (console locked)" in s.read_until(PROMPT)
    opened = run_tool("status", "--port", board.port, "--service", "open-repl", "--service-key", str(key))
    assert opened.returncode == 0, opened.stdout + opened.stderr
    assert "pwned" not in board.mpremote("resume", "fs", "ls").stdout


@pytest.mark.timeout(300)  # the flash, and the idle limit run out twice over, on a loaded machine
def test_a_repl_a_service_response_opened_locks_again_when_unused(locked):
    board, key = locked

    def open_repl() -> None:
        opened = run_tool("status", "--port", board.port, "--service", "open-repl", "--service-key", str(key))
        assert opened.returncode == 0, opened.stdout + opened.stderr

    # A short idle limit for the test (the lock record's repl_idle_s; 600 s by default), taken at the
    # next opening: this REPL is closed with a reset first. Short, but well over the gap between two
    # uses below (half a second, and an mpremote start, which takes seconds on a loaded machine).
    idle_s = 8
    open_repl()
    board.mpremote("resume", "exec", "import json\nwith open('state/console.json', 'w') as f:\n"
                   " json.dump({'locked': True, 'repl_idle_s': %d}, f)" % idle_s)
    with serial.Serial(board.port, timeout=ANSWER_S) as s:
        s.write(b"\r\x02")
        s.read_until(b">>> ")
        s.write(b"\x04")
        s.read_until(b"soft reboot\r\n")
    console_answers(board.port)
    open_repl()
    in_use_since = time.monotonic()
    while time.monotonic() - in_use_since < idle_s * 1.5:  # in use: the REPL stays open past the idle limit
        assert "ok" in board.mpremote("resume", "exec", "print('ok')").stdout
        time.sleep(0.5)
    # Unused: the unit resets by itself and the console is locked again. The port is only read,
    # which the unit cannot see. (The reset is the event; the bound only stops a hang.)
    with serial.Serial(board.port, timeout=120) as s:
        gone = s.read_until(b"resetting]")
    assert b"resetting]" in gone, gone
    out = console_answers(board.port)
    assert b">>> " not in out
    with serial.Serial(board.port, timeout=ANSWER_S) as s:
        s.write(b"\x03\x01")
        assert b"ignored (console locked)" in s.read_until(PROMPT)
