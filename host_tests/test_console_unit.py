"""The console and the status registry on the MicroPython unix port and CPython (same script)."""

import hashlib
import hmac
import json
import os
import tempfile

import pytest

SERVICE_KEY = "5a" * 32  # the device's service key in these tests: it must never be printed

CONSOLE = r"""
import json, sys
from cellguard import console, status
status.clear()
out = []
rec = {"device_id": "cg-0011223344556677", "key_id": "k1", "key": "%s"}
clock = [0]  # the service back-off's clock: each input chunk comes CONSOLE_STEP_MS later
c = console.Console(out.append, locked=%s, auth=console.ServiceAuth(rec, clock=lambda: clock[0]),
                    wipe=lambda: out.append("<WIPED>"))
def typed(text):
    res = None
    for b in text:
        r = c.feed(b)
        res = r or res
    return res
status.set("modem", "imei", "356938035643809")
status.set("modem", "iccid", "8944500102198304826")
status.set("modem", "registration", "home")
status.set("outbox", "depth", 3)
import os
for chunk in (os.getenv("CONSOLE_INPUT") or "").split(","):
    if not chunk:
        continue
    clock[0] += int(os.getenv("CONSOLE_STEP_MS") or 100000)
    r = typed(bytes.fromhex(chunk))
    out.append("<RESULT %%s>" %% r)
print(json.dumps("".join(out)))
"""


def run(runtime, *inputs: bytes, locked=True) -> str:
    script = CONSOLE % (SERVICE_KEY, locked)
    # Through the environment: the unix port's -c mode crashes on long command-line arguments.
    env = dict(os.environ, CONSOLE_INPUT=",".join(i.hex() for i in inputs), CELLGUARD_FS=tempfile.mkdtemp())
    return json.loads(runtime.run(script, env=env).strip().splitlines()[-1])


def test_status_masks_identifiers_and_json_parses(runtime):
    out = run(runtime, b"status\r", b"status --json\r")
    assert "***********3809" in out and "356938035643809" not in out
    assert "***************4826" in out and "8944500102198304826" not in out
    line = next(x for x in out.splitlines() if x.startswith("{"))
    snap = json.loads(line)
    assert snap["outbox"]["depth"] == 3 and snap["modem"]["registration"] == "home"
    assert snap["console"]["mode"] == "production (locked)"


def test_garbled_and_control_bytes_get_clear_errors_and_console_keeps_running(runtime):
    out = run(runtime, b"\xff\xfe\x80stat\r", b"\x03\x04\x01\x02\x05", b"nonsense\r", b"x" * 300 + b"\r", b"version\r")
    assert "garbled input (3 byte(s)" in out
    for c in ("0x03", "0x04", "0x05"):
        assert f"control character {c} ignored (console locked)" in out
    # Ctrl-A is mpremote's: it gets the raw-REPL banner (so mpremote goes on and is refused), Ctrl-B leaves
    assert "raw REPL; CTRL-B to exit" in out and "0x01" not in out and "0x02" not in out
    assert "unknown command 'nonsense'" in out
    assert "line longer than 160 characters" in out
    assert "cellguard 0.1.0" in out.split("version")[-1]
    assert "<RESULT None>" in out and "repl" not in out.replace("REPL", "")


def test_unauthenticated_service_commands_are_refused_and_logged(runtime):
    out = run(runtime, b"service wipe\r", b"service open-repl 00\r", b"service challenge\r",
              b"service wipe " + b"0" * 64 + b"\r", b"service wipe " + b"0" * 64 + b"\r", b"log\r")
    assert "service wipe refused: it needs the response to a fresh challenge" in out
    assert "service open-repl refused: no challenge issued" in out
    assert "service wipe refused: wrong response" in out
    # The nonce is single-use: a second try with the same challenge is refused without one.
    assert out.rsplit("log\n", 1)[0].count("error: service wipe refused: no challenge issued") == 1
    assert "<WIPED>" not in out
    log = out.split("log\n")[-1]
    assert "ERROR service wipe refused: not authenticated" in log
    assert "ERROR service wipe refused: wrong response" in log
    assert SERVICE_KEY not in out


def _answer(device_id: str, nonce: str, action: str) -> str:
    msg = b"|".join((b"cellguard-service-v1", device_id.encode(), nonce.encode(), action.encode()))
    return hmac.new(bytes.fromhex(SERVICE_KEY), msg, hashlib.sha256).hexdigest()


@pytest.mark.parametrize("action,expect", [("wipe", "<WIPED>"), ("open-repl", "<RESULT repl>")])
def test_service_action_with_the_right_response_is_authorised(runtime, action, expect):
    # Two runs of the same script: the first gets a challenge; a fixed nonce is not possible, so the
    # script runs the whole exchange with the answer computed by a stand-in host inside it.
    script = (CONSOLE % (SERVICE_KEY, True)).replace(
        "for chunk in (os.getenv(\"CONSOLE_INPUT\") or \"\").split(\",\"):",
        "typed(b'service challenge\\r')\n"
        "words = ''.join(out).split('challenge ')[-1].split()\n"
        "answer = console.hmac_sha256(bytes.fromhex(rec['key']), console.service_message(words[0], words[1], '%s'))\n"
        "out.append('<RESULT %%s>' %% typed(b'service %s ' + answer.hex().encode() + b'\\r'))\n"
        "for chunk in (os.getenv(\"CONSOLE_INPUT\") or \"\").split(\",\"):" % (action, action),
    )
    out = json.loads(runtime.run(script, env=dict(os.environ, CELLGUARD_FS=tempfile.mkdtemp())).strip().splitlines()[-1])
    assert expect in out and "refused" not in out
    assert SERVICE_KEY not in out


def test_device_hmac_matches_python_hmac(runtime):
    msg = b"cellguard-service-v1|cg-1|abcd|wipe"
    got = runtime.run(
        "from cellguard import console\nprint(console.hmac_sha256(bytes.fromhex('%s'), %r).hex())" % (SERVICE_KEY, msg)
    ).strip()
    assert got == _answer("cg-1", "abcd", "wipe")


def test_status_registry_refuses_secret_names(runtime):
    out = runtime.run(
        "from cellguard import status\n"
        "for sec, key in (('sim', 'pin'), ('keys', 'id'), ('modem', 'puk_code'), ('x', 'root_key')):\n"
        "    try:\n"
        "        status.set(sec, key, '1234')\n"
        "        print('accepted', sec, key)\n"
        "    except status.StatusError:\n"
        "        print('refused', sec, key)\n"
        "for i in range(40):\n"
        "    status.log('event %d' % i, error=(i % 2 == 0))\n"
        "s = status.snapshot()\n"
        "print(len(s['events']), s['error_count'], status.mask('12'), status.mask(None))\n"
    )
    assert "accepted" not in out and out.count("refused") == 4
    assert "24 20 ** None" in out


def test_render_status_is_stable_for_an_empty_registry(runtime):
    out = runtime.run("from cellguard import console, status\nstatus.clear()\nprint(console.render_status(console.snapshot()))")
    assert "sim lock    unknown" in out and "errors      0 (none recent)" in out


def test_registration_number_from_the_driver_is_shown_by_name(runtime):
    out = runtime.run(
        "from cellguard import console, status\nstatus.clear()\nstatus.set('modem', 'registration', 5)\n"
        "print(console.render_status(console.snapshot()))"
    )
    assert "network     roaming" in out


BACKOFF = r"""
import json
from cellguard import console, security, status
status.clear()
out = []
rec = {"device_id": "cg-0011223344556677", "key_id": "k1", "key": "%s"}
clock = [0]  # the test's clock: nothing sleeps
def power_on():
    return console.Console(out.append, locked=True, auth=console.ServiceAuth(rec, clock=lambda: clock[0]),
                           wipe=lambda: None)
def typed(c, text):
    del out[:]
    for b in text:
        c.feed(b)
    return "".join(out)
def answer(c, action):
    words = typed(c, b"service challenge\r").split("challenge ")[-1].split()
    return console.hmac_sha256(bytes.fromhex(rec["key"]), console.service_message(words[0], words[1], action)).hex()
c = power_on()
report = {"unlock": typed(c, b"service open-repl " + answer(c, "open-repl").encode() + b"\r")}
waits, refusals = [], []
for guess in range(30):
    clock[0] += c.auth.wait_ms()  # the guesser waits as long as it must
    typed(c, b"service challenge\r")
    typed(c, b"service wipe " + b"%%064x" %% guess + b"\r")
    refusals.append(typed(c, b"service challenge\r"))  # at once: refused by the back-off
    waits.append(c.auth.wait_ms())
report["waits"], report["refusals"] = waits, refusals[:3]
c = power_on()  # a reboot: the count is on flash, the wait starts again in full
report["after_reboot"] = typed(c, b"service challenge\r")
report["log"] = "".join(str(e) for e in status.events())
clock[0] += c.auth.wait_ms()
report["right_answer"] = typed(c, b"service open-repl " + answer(c, "open-repl").encode() + b"\r")
report["then"] = typed(c, b"service challenge\r")
report["security"] = security.load()
report["log_cmd"] = typed(c, b"log\r")
print(json.dumps(report))
"""


CUT_AT_THE_COMPARISON = r"""
from cellguard import console, service
rec = {"device_id": "cg-0011223344556677", "key_id": "k1", "key": "%s"}
out = []
c = console.Console(out.append, locked=True, auth=console.ServiceAuth(rec), wipe=lambda: None)
for b in b"service challenge\r":
    c.feed(b)
def cut(a, b):  # the power fails as the guess is compared, before any answer
    raise SystemExit(86)
service.ct_equal = cut
try:
    for b in b"service wipe " + b"00" * 32 + b"\r":
        c.feed(b)
except SystemExit:
    pass
print("AFTER THE CUT", console.ServiceAuth(rec).fails)
"""


def test_a_power_cut_as_a_guess_is_checked_still_counts_it(runtime, tmp_path):
    # The back-off survives a reboot only if the attempt is on flash before anyone can see (or
    # time) its outcome: a guesser cutting the power then gains nothing.
    env = dict(os.environ, CELLGUARD_FS=str(tmp_path))
    out = runtime.run(CUT_AT_THE_COMPARISON % SERVICE_KEY, env=env, heapsize="192K")
    assert "AFTER THE CUT 1" in out, out


def test_refused_service_attempts_back_off_across_reboots_and_stay_on_record(runtime, tmp_path):
    env = dict(os.environ, CELLGUARD_FS=str(tmp_path))
    # 192K (an RP2040's): the script keeps 30 rounds of answers in the same heap as the console.
    r = json.loads(runtime.run(BACKOFF % SERVICE_KEY, env=env, heapsize="192K").strip().splitlines()[-1])
    assert "REPL open" in r["unlock"]
    # Each refusal makes the next attempt wait longer: 2 s, 4 s, 8 s ... at most an hour.
    assert r["waits"][:4] == [2000, 4000, 8000, 16000] and r["waits"][-1] == 3600000
    assert all(b >= a for a, b in zip(r["waits"], r["waits"][1:], strict=False))
    assert sum(r["waits"]) > 20 * 3600 * 1000  # 30 guesses cost a day, not 30 seconds
    assert "error: service actions refused for 2 s after 1 refused attempt(s)" in r["refusals"][0]
    assert "for 3600 s after 30 refused attempt(s)" in r["after_reboot"]
    assert "REPL open" in r["right_answer"] and r["then"].startswith("service challenge\nchallenge cg-")
    # The recent log lost the first unlock to the noise; the security record kept it.
    assert "service open-repl authorised" not in r["log"]
    texts = [(e[1], e[2]) for e in r["security"]]
    assert texts[0] == ("service open-repl authorised", 1)
    assert ("service wipe refused: wrong response", 30) in texts
    assert texts[-1] == ("service open-repl authorised", 1)
    assert "service wipe refused: wrong response (x30)" in r["log_cmd"]
    assert not (tmp_path / "state" / "service_guard").read_text().strip("0")  # the success cleared it
