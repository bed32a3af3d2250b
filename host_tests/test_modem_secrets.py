"""Secrets never leave the modem driver in an error: the SIM PIN/PUK (+CPIN=, +CLCK=, +CPWD=) and
the APN password (+CGAUTH, +QICSGP, +CNCFG) are redacted wherever a command goes into an exception
message, the driver's event log or the status page (which the unauthenticated console shows).
The driver runs on the MicroPython unix port; every secret command fails once with a +CME ERROR and
once with a timeout (a dropped response, then recovery)."""

import pytest
from cellguard import at
from modem_fixtures import DIALECTS, emulated_modem, run_driver

PIN, PUK, NEW_PIN, PASSWORD = "8642", "97531864", "2468", "pw-s3cret"
SECRETS = (PIN, PUK, NEW_PIN, PASSWORD)

APN_COMMAND = {"nrf91": "AT+CGAUTH=", "bg96": "AT+QICSGP=", "sim7080": "AT+CNCFG=", "sara-r4": "AT+CGAUTH="}

SCRIPT = """
from cellguard import status
m._log = lambda s: print('MLOG', s)
m.init()

# A dropped response is waited for until the timeout, and nothing ever answers it: in the timeout
# phase the secret commands (and those alone) give up after 300 ms. The +CME phase keeps 1.5 s.
DROPPED = tuple((p, 300) for p in (b'AT+CPIN=', b'AT+CLCK=', b'AT+CPWD=', %(apn)r[DIALECT]))

def attempt(name, fn):
    for phase in ('cme', 'timeout'):
        engine.timeouts = DROPPED if phase == 'timeout' else ()
        try:
            fn()
            print('NOERROR', name, phase)
        except at.ModemError as e:
            print('ERR', name, phase, type(e).__name__, e.command)
            print('STR', str(e))
            print('REPR', repr(e))
            status.log('app: attach failed: %%s' %% e, error=True)  # what app._attach logs
            status.log('modem: %%r' %% (e,), error=True)  # what modemstatus logs

attempt('pin', lambda: m.enter_pin(%(pin)r))
attempt('puk', lambda: m.enter_puk(%(puk)r, %(new)r))
attempt('lock', lambda: m.set_pin_lock(True, %(pin)r))
attempt('change', lambda: m.change_pin(%(pin)r, %(new)r))
attempt('apn', lambda: m.set_apn('iot.test', 'user1', %(pwd)r))
print('EVENTS', status.events())
print('SNAPSHOT', status.snapshot())
""" % {"pin": PIN, "puk": PUK, "new": NEW_PIN, "pwd": PASSWORD, "apn": {d: c.encode() for d, c in APN_COMMAND.items()}}


def fail_each_call(emu, prefix, plan):
    """The calls starting with prefix fail in turn as planned: 'cme' (+CME ERROR: 16) or 'drop'."""
    plan = list(plan)

    def arm():
        what = plan.pop(0)
        if what == "cme":
            emu.cme_error(prefix, 16)
        else:
            emu.drop_response(prefix)

    emu.on_command(prefix, arm, count=len(plan))


@pytest.mark.timeout(90)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_secret_commands_are_redacted_in_errors_logs_and_status(dialect):
    with emulated_modem(dialect) as emu:
        fail_each_call(emu, "AT+CPIN=", ["cme", "drop", "cme", "drop"])
        fail_each_call(emu, "AT+CLCK=", ["cme", "drop"])
        fail_each_call(emu, "AT+CPWD=", ["cme", "drop"])
        fail_each_call(emu, APN_COMMAND[dialect], ["cme", "drop", "drop"])  # a timeout is retried once
        # 1.5 s as the other driver tests: a +CME answer later than the timeout (600 ms once) is a
        # timeout, and the phases would not be the ones planned
        out = run_driver(emu, SCRIPT, at_timeout_ms=1500, timeout=80)
        sent = list(emu.commands)
    # The secrets really went to the modem (so the test would see a leak)...
    assert any(PIN in c for c in sent) and any(PASSWORD in c for c in sent)
    # ...and every secret command failed both ways, typed, with its name but not its arguments.
    for name, command in (
        ("pin", "AT+CPIN"),
        ("puk", "AT+CPIN"),
        ("lock", "AT+CLCK"),
        ("change", "AT+CPWD"),
        ("apn", APN_COMMAND[dialect].rstrip("=")),
    ):
        assert f"ERR {name} cme CmeError b'{command}=<redacted>'" in out, out
        assert f"ERR {name} timeout AtTimeout b'{command}=<redacted>'" in out, out
    assert "MLOG timeout: AT+CPIN=<redacted>: recovering" in out
    assert "ERROR app: attach failed: AT+CPWD=<redacted> -> +CME ERROR: 16" in out  # status errors
    for secret in SECRETS:
        assert secret not in out, f"{secret!r} leaked:\n{out}"


def test_redact_keeps_the_command_name_only():
    assert at.redact(b'AT+CPIN="1234"') == b"AT+CPIN=<redacted>"
    assert at.redact('at+qicsgp=1,1,"apn","u","p",3') == b"AT+QICSGP=<redacted>"
    assert at.redact(b"AT+CPIN?") == b"AT+CPIN?"  # a query carries no secret
    assert at.redact(b"AT+CSQ") == b"AT+CSQ"
    e = at.AtTimeout(b'AT+CLCK="SC",1,"1234"', [])
    assert "1234" not in str(e) + repr(e) + repr(e.command)
