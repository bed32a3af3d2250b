"""The driver's reply parsing under CPython with hypothesis: whatever a modem answers (before its OK),
every driver call returns or raises a cellguard ModemError, never ValueError/IndexError/etc."""

import pytest
from atstream import ScriptedStream
from cellguard import at, dialects, modem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPLY_LINES = st.lists(
    st.one_of(
        st.sampled_from(
            [
                b"+CEREG: 1",
                b"+CEREG: x,",
                b"+CESQ: 1,2",
                b"+CPIN: ",
                b'+QIRD: 4,"a"',
                b"+QIRD: 9",
                b"+USORF: 0,,",
                b"#XRECVFROM: 0,1,zz",
                b"+CARECV: 3,a",
                b"+CLCK: ",
                b"+QPINC: ",
                b"zz",
                b"+SPIC: 1",
                b"+UPINCNT: ",
                b"+CPINR: ",
                b"#XSOCKET: x",
                b"+USOCR: ",
                b"+CAOPEN: 0,x",
            ]
        ),
        st.binary(max_size=30).filter(lambda b: b"\r" not in b and b"\n" not in b),
    ),
    max_size=4,
)

CALLS = [
    "imei",
    "iccid",
    "imsi",
    "sim_state",
    "pin_retries",
    "pin_lock_enabled",
    "registration",
    "pdp_active",
    "signal",
    "psm",
    "udp",
]


def driver(dialect, lines):
    reply = b"".join(b"\r\n" + ln + b"\r\n" for ln in lines) + b"\r\nOK\r\n"

    def respond(cmd):
        if cmd.endswith(b"\r") and cmd.startswith(b"AT"):
            return reply
        return b""

    d = dialects.get(dialect)
    m = modem.Modem(at.AtEngine(ScriptedStream(respond, 5), d.line_buffer(), boot_urcs=()), d)
    m.at.default_timeout_ms = 50
    m.at.timeouts = ()
    m.socket_open_timeout_ms = 20
    m.session = 1
    return m


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@pytest.mark.parametrize("dialect", sorted(dialects.DIALECTS))
@given(lines=REPLY_LINES, call=st.sampled_from(CALLS))
def test_any_reply_gives_a_result_or_a_modem_error(dialect, lines, call):
    m = driver(dialect, lines)
    try:
        if call == "udp":
            s = m.open_udp()
            s.sendto(b"x", "127.0.0.1", 9)
            s.recvfrom(0)
        else:
            getattr(m, call)()
    except at.ModemError:
        pass


STATUS_SCRIPT = """
import sys, types
calls = []
fake = types.ModuleType('cellguard.status')
fake.set = lambda section, key, value: calls.append((section, key, value))
fake.log = lambda text: calls.append(('log', text))
sys.modules['cellguard.status'] = fake
import cellguard
cellguard.status = fake
from atstream import ScriptedStream
from cellguard import at, dialects, modem
d = dialects.get('nrf91')
m = modem.Modem(at.AtEngine(ScriptedStream(lambda c: b'\\r\\nOK\\r\\n'), boot_urcs=()), d)
m.at.rebooted = True
print(m.recover())
print(sorted(c[1] for c in calls if c[0] == 'modem'), [c[1] for c in calls if c[0] == 'log'])
"""


def test_driver_publishes_health_to_the_status_registry(cpy):
    """If cellguard.status exists the driver reports health there, and nothing identifying."""
    step, published = cpy.run(STATUS_SCRIPT).strip().split("\n")
    assert step == "reboot"
    assert published == (
        "['dialect', 'line_overflows', 'reboots', 'recoveries', 'registration'] ['modem: recovered by reboot']"
    )
