"""Traffic recorded from real modems in field trials, fed into the AT engine and the driver: NUL
bytes are data (a prompt matches only while armed), a command starts clean after a timeout,
every URC real units send is dispatched (socket closes reopen the socket; restart banners mark a
restart), and identities come only from a line that validates (docs/modem.md, "Field traffic").

Engine cases run on the MicroPython unix port and CPython; driver cases on the unix port against
the emulator, on every dialect.
"""

import types

import pytest
from modem_fixtures import DIALECTS, Sim, emulated_modem, run_driver, udp_echo_server

# ---- 8. a NUL byte is data, never a prompt ----------------------------------------------------
NUL_SCRIPT = r"""
from cellguard import at
from atstream import ScriptedStream
s = ScriptedStream(lambda c: b'\r\n\x00\x00ZZ\r\n\r\nOK\r\n' if c.startswith(b'AT+X') else b'\r\nOK\r\n', 3)
e = at.AtEngine(s)
e.default_timeout_ms = 300
print('REPLY', e.command(b'AT+X'))
lines = []
e.add_urc(b'\x00', lambda b, n: lines.append(bytes(b[:n])))
s.feed(b'\r\n\x00\x00YY\r\n')
e.poll(0)
print('IDLE', lines)
"""


def test_a_nul_byte_is_data_not_a_prompt(runtime):
    out = runtime.run(NUL_SCRIPT).split("\n")
    assert out[0] == r"REPLY [b'\x00\x00ZZ']"
    assert out[1] == r"IDLE [b'\x00\x00YY']"


@pytest.mark.timeout(60)
def test_ublox_binary_receive_keeps_nul_cr_and_lf():
    # AT+UDCONF=1,0: +USORF carries the datagram as raw bytes in quotes, NULs and line ends included.
    payload = b"\r\n\x00\x00ZZ\r\n" + bytes(range(256)) + b'"\r\n'
    with emulated_modem("sara-r4") as emu, udp_echo_server() as echo:
        out = run_driver(
            emu,
            """
d.setup = (b'AT+UDCONF=1,0', b'AT+CGEREP=1')
attach()
s = m.open_udp()
payload = %r
s.sendto(payload, '127.0.0.1', ECHO_PORT)
got = s.recvfrom(3000)
print('SAME', got is not None and got[0] == payload, 'LEN', got and len(got[0]))
"""
            % payload,
            echo_port=echo.port,
        )
    assert "SAME True" in out, out
    assert emu.settings["udconf.1"] == "0"


# ---- 9. a new command starts clean ------------------------------------------------------------
CLEAN_SCRIPT = r"""
from cellguard import at
from atstream import ScriptedStream
replies = {b'AT+CIMI': b'\r\n90128000', b'AT+CARECV=0,10': b'\r\n+CARECV: 10,abc',
           b'AT+CSQ': b'\r\n+CSQ: 20,99\r\n\r\nOK\r\n'}
s = ScriptedStream(lambda c: replies.get(c.rstrip(b'\r'), b'\r\nOK\r\n'), 4)
e = at.AtEngine(s)
e.default_timeout_ms = 100
e.partial_grace_ms = 20
for cmd, raw in ((b'AT+CIMI', None), (b'AT+CARECV=0,10', b'+CARECV: ')):
    try:
        e.command(cmd, raw_prefix=raw)
    except at.AtTimeout as x:
        print('TIMEOUT', x.lines)
    print('NEXT', e.command(b'AT+CSQ', prefix=b'+CSQ:'))
s.feed(b'\r\nnoise with no end')  # half a line while idle (no URC would take this long)
print('AFTER NOISE', e.command(b'AT+CSQ', prefix=b'+CSQ:'), e.partials_dropped)
"""


def test_a_new_command_starts_clean_after_a_timeout(runtime):
    out = runtime.run(CLEAN_SCRIPT).split("\n")
    assert out[:4] == ["TIMEOUT []", "NEXT [b'+CSQ: 20,99']", "TIMEOUT []", "NEXT [b'+CSQ: 20,99']"]
    assert out[4] == "AFTER NOISE [b'+CSQ: 20,99'] 1"


# ---- 10. every URC real units send is dispatched ----------------------------------------------
def field_urcs(emu):
    """What the family sends unasked in the field: registration, RRC state, time zone, modem
    events, a socket closed by the modem (socket 3: not one the driver uses here)."""
    urcs = [u.format(stat=1) for u in emu.vendor.network_urcs] + ["+CREG: 1", "+CGREG: 5"]
    urcs.append(emu.vendor.closed_urc(types.SimpleNamespace(ident=3)))
    if emu.dialect == "sim7080":
        urcs.append("+CAOPEN: 3,4")  # a late open result, its command long over
    return urcs


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_field_urcs_never_land_in_a_reply(dialect):
    with emulated_modem(dialect) as emu:
        urcs = field_urcs(emu)
        emu.urc_burst("AT+CIMI", urcs, before=True)
        emu.urc_burst("AT+CSQ", urcs)
        out = run_driver(
            emu,
            """
m.init()
print('CIMI', m.cmd(b'AT+CIMI'))
print('CSQ', m.cmd(b'AT+CSQ', prefix=b'+CSQ:'))
print('SEEN', m.other_urcs > 0, d.closed[3], engine.unsolicited)
""",
        )
    assert "CIMI [b'901280000012345']" in out, out
    assert "CSQ [b'+CSQ: 20,99']" in out
    assert "SEEN True 1 0" in out


ROUND_TRIPS = """
attach()
s = m.open_udp()
s.sendto(b'one', '127.0.0.1', ECHO_PORT)
print('GOT1', s.recvfrom(3000))
m.signal()                      # the modem closes the socket on its own meanwhile (its URC)
s.sendto(b'two', '127.0.0.1', ECHO_PORT)
print('GOT2', s.recvfrom(3000))
print('RECOVERIES', engine.recoveries)
"""
# The command each dialect opens a socket with (SIMCom: on the first send to a remote).
OPEN_COMMANDS = {"nrf91": "AT#XSOCKET=1", "bg96": "AT+QIOPEN", "sim7080": "AT+CAOPEN", "sara-r4": "AT+USOCR"}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_socket_the_modem_closed_is_reopened(dialect):
    with emulated_modem(dialect) as emu, udp_echo_server() as echo:
        emu.on_command("AT+CSQ", lambda: emu._remote_close(None))
        out = run_driver(emu, ROUND_TRIPS, echo_port=echo.port)
    assert "GOT1 (b'one'" in out, out
    assert "GOT2 (b'two'" in out, out
    assert len(emu.commands_matching(OPEN_COMMANDS[dialect])) == 2  # reopened, once
    assert "RECOVERIES 0" in out  # no timeout, no error on the way


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_restart_banner_without_its_boot_urc_is_a_restart(dialect):
    # The modem restarts while AT+CSQ waits; its boot URC (RDY, +CFUN: 1) is lost but the rest of
    # its banner arrives (SMS Ready, +CPIN: READY, APP RDY, ..., time zone after registering).
    with emulated_modem(dialect, field_traffic=True) as emu, udp_echo_server() as echo:
        v = emu.vendor
        banner = list(v.restart_banner) or list(v.boot_urcs)  # the SLM's only line is its "Ready"
        emu.on_command("AT+CSQ", lambda: emu._reboot(banner))
        emu.drop_response("AT+CSQ")  # cut off by the restart
        out = run_driver(emu, ROUND_TRIPS, echo_port=echo.port)
    assert "GOT2 (b'two'" in out, out
    assert emu.reboots == 1 and "LOG modem restarted" in out, out
    # Recognised from its banner, not after a timeout and the recovery ladder; u-blox prints
    # nothing at all, so there the timeout and the echo coming back are the only signs.
    assert ("RECOVERIES 0" in out) != (dialect == "sara-r4"), out


# ---- 11. identity from the right line ---------------------------------------------------------
VALID = {"IMEI": "350457790123457", "ICCID": "89882806660000012346", "IMSI": "901280000012345"}
INVALID = {  # each kind: garbage, a wrong check digit (or a wrong length), a lone digit
    "IMEI": ["GARBAGE-IMEI", "350457790123458", "1"],
    "ICCID": ["GARBAGE-ICCID", "89882806660000012345", "1"],
    "IMSI": ["GARBAGE-IMSI", "90128000001234", "1"],
}
IDENTITY_SCRIPT = """
m.init()
for kind, call in (('IMEI', m.imei), ('ICCID', m.iccid), ('IMSI', m.imsi)):
    for case in range(4):
        try:
            print(kind, case, 'GOT', call())
        except Exception as e:
            print(kind, case, type(e).__name__, getattr(e, 'kind', None), e)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_identity_only_from_a_line_that_validates(dialect):
    with emulated_modem(dialect, sim=Sim()) as emu:
        urcs = [u.format(stat=1) for u in emu.vendor.network_urcs]  # e.g. +CSCON: 1, DST: 1, +CTZE: ...
        for kind, value in VALID.items():
            emu.identity_answer(kind, value, urcs=urcs)
            for bad in INVALID[kind]:
                emu.identity_answer(kind, bad)
        out = run_driver(emu, IDENTITY_SCRIPT)
    for kind, value in VALID.items():
        command = emu.vendor.identities[kind][0]
        assert f"{kind} 0 GOT {value}" in out, out
        for case in (1, 2, 3):
            assert f"{kind} {case} IdentityInvalid {kind} no valid {kind} in the reply to {command}" in out, out
