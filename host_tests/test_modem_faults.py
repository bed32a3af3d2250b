"""Every injected modem fault: the firmware driver (MicroPython unix port) either recovers within a
bounded time or fails with a clear, typed error. Each test has a timeout; none can hang."""

import select
import threading
import time

import pytest
from modem_fixtures import DIALECTS, Sim, emulated_modem, run_driver, run_driver_paused, udp_echo_server

ROUND_TRIP = """
attach()
s = m.open_udp()
t = runtime.ticks_ms()
s.sendto(b'ping', '127.0.0.1', ECHO_PORT)
got = s.recvfrom(4000)
print('ECHO', got and got[0], runtime.ticks_diff(runtime.ticks_ms(), t) < %d)
print('RECOVERIES', engine.recoveries, 'REBOOTS', engine.reboots)
"""

ACTIVATE = {"nrf91": "AT+CGACT=1", "bg96": "AT+QIACT=1", "sim7080": "AT+CNACT=0,1", "sara-r4": "AT+CGACT=1"}
RECV_URC = {
    "nrf91": "#XAPOLL: 0,1",
    "bg96": '+QIURC: "recv",0',
    "sim7080": "+CADATAIND: 0",
    "sara-r4": "+UUSORF: 0,4",
}
SEND_COMMAND = {"nrf91": "AT#XSENDTO", "bg96": "AT+QISEND", "sim7080": "AT+CASEND", "sara-r4": "AT+USOST"}
RECV_COMMAND = {"nrf91": "AT#XRECVFROM", "bg96": "AT+QIRD", "sim7080": "AT+CARECV", "sara-r4": "AT+USORF"}


def round_trip(emu, echo, bound_ms=8000, extra="", at_timeout_ms=1500):
    return run_driver(emu, ROUND_TRIP % bound_ms + extra, echo_port=echo.port, at_timeout_ms=at_timeout_ms)


# Attach, open a socket, then send a marker command on which the test hooks its fault.
AFTER_ATTACH = "attach()\ns = m.open_udp()\nengine.command(b'AT+CSQ')\n"
# The modem has restarted while the driver was paused (restart_while_paused): its boot lines are
# in the port already. A SARA prints nothing at boot (its restart shows only in the echo of the next
# command): there, a short idle with nothing to see.
AWAIT_RESTART = "engine.wait_for(lambda: engine.rebooted, 300 if DIALECT == 'sara-r4' else 30000)\n"


def fault_after_attach(emu, echo, action, body: str) -> str:
    emu.on_command("AT+CSQ", action)
    return run_driver(emu, AFTER_ATTACH + body.lstrip("\n"), echo_port=echo.port)


def restart_while_paused(emu, before=None):
    """A spontaneous restart (after `before`, e.g. a SIM swap), done once the modem has booted
    again and written its boot lines: for run_driver_paused, the driver idle between commands."""
    booted = threading.Event()

    def restart():
        if before:
            before()
        emu._reboot()
        emu._after(emu.delays.boot_s, booted.set)  # after the boot, whose timer was set first

    emu.call(restart)
    assert booted.wait(60), "the emulated modem never came back"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_dropped_response_resyncs_and_retries(dialect):
    with emulated_modem(dialect) as emu, udp_echo_server() as echo:
        emu.drop_response("AT+CEREG?")
        out = round_trip(emu, echo)
    assert "ECHO b'ping' True" in out
    assert "RECOVERIES 1" in out
    assert len(emu.commands_matching("AT+CEREG?")) >= 2  # retried after the resync


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_late_response_is_drained_not_taken_for_the_next_command(dialect):
    with emulated_modem(dialect) as emu, udp_echo_server() as echo:
        emu.delay_response("AT+CEREG?", 2.0)  # longer than the 1.5 s test timeout: its OK comes late
        out = round_trip(emu, echo)
    assert "ECHO b'ping' True" in out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_slow_response_within_the_timeout_is_just_waited_for(dialect):
    with emulated_modem(dialect) as emu, udp_echo_server() as echo:
        # Well inside the timeout (a tenth of it): a loaded machine adds its own delay on top.
        emu.delay_response(ACTIVATE[dialect], 0.8)
        out = round_trip(emu, echo, at_timeout_ms=8000)
    assert "ECHO b'ping' True" in out and "RECOVERIES 0" in out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_noise_and_split_writes(dialect):
    with emulated_modem(dialect, seed=7) as emu, udp_echo_server() as echo:
        emu.split_writes = True
        emu.inject(b"\x00\xff garbage \x1b[2J\r\nNOT A URC\r\n\xfe")
        emu.on_command("AT+CEREG?", lambda: emu._write(b"\r\n\x07\x08junk\r\n"))  # inside a reply
        # ...and while the line is idle, after the round trip:
        emu.on_command("AT+CSQ", lambda: emu._after(0.05, lambda: emu._write(b"\r\n\x01noise\xff\r\n")))
        extra = "engine.command(b'AT+CSQ')\nengine.wait_for(lambda: engine.unsolicited, 2000)\nprint('UNSOLICITED', engine.unsolicited)\n"
        out = round_trip(emu, echo, extra=extra + "print('IMEI', m.imei())")
    assert "ECHO b'ping' True" in out
    assert "UNSOLICITED 1" in out and "IMEI 350457790123457" in out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_urc_burst_between_reply_lines_goes_to_handlers(dialect):
    # URCs right after the receive reply's first line (between +QIRD's / #XRECVFROM's header and
    # its hex payload line), and a +CEREG URC inside the +CEREG? read reply: routed right.
    with emulated_modem(dialect) as emu, udp_echo_server() as echo:
        burst = ['+CEREG: 5,"0A1B","01A2D001",7', RECV_URC[dialect], "+CPIN: READY"]
        emu.urc_burst(RECV_COMMAND[dialect], burst)
        emu.urc_burst("AT+CGSN", ['+CEREG: 1,"0A1B","01A2D001",7'])
        out = round_trip(
            emu,
            echo,
            extra="print('STAT', m.reg_stat)\nprint('IMEI', engine.command(b'AT+CGSN'))\n"
            "print('READ', m.registration())",
        )
    assert "ECHO b'ping' True" in out
    assert "STAT 5" in out  # the URC reached its handler, not the response
    assert "IMEI [b'350457790123457']" in out
    assert "READ 1" in out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_reboot_in_the_middle_of_a_send(dialect):
    with emulated_modem(dialect) as emu, udp_echo_server() as echo:
        emu.reboot_during(SEND_COMMAND[dialect])
        out = round_trip(emu, echo)
    assert "ECHO b'ping' True" in out
    assert emu.reboots == 1
    assert len(emu.commands_matching("ATE0")) == 2  # re-initialised after the restart
    assert [d for d, _ in echo.received] == [b"ping"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_spontaneous_reboot_between_commands_is_detected(dialect):
    with emulated_modem(dialect) as emu, udp_echo_server() as echo:
        out = run_driver_paused(
            emu,
            AFTER_ATTACH + "pause()\n" + AWAIT_RESTART + """
print('REBOOTED', engine.rebooted)
s.sendto(b'again', '127.0.0.1', ECHO_PORT)
print('ECHO', s.recvfrom(20000)[0], 'REBOOTS', engine.reboots)
""",
            lambda: restart_while_paused(emu),
            echo_port=echo.port,
        )
    # A SARA prints nothing at boot: its restart shows only in the echo of the next command.
    assert f"REBOOTED {dialect != 'sara-r4'}" in out
    assert "ECHO b'again' REBOOTS 1" in out
    assert len(emu.commands_matching("ATE0")) == 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_cme_error_is_typed_and_the_driver_keeps_going(dialect):
    with emulated_modem(dialect) as emu:
        emu.cme_error("AT+CIMI", 13)
        out = run_driver(
            emu,
            """
m.init()
try:
    m.imsi()
except at.CmeError as e:
    print('CME', e.code, e.command, e.lines, isinstance(e, at.ModemError))
print('IMSI', m.imsi())
""",
        )
    assert "CME 13 b'AT+CIMI' [] True" in out
    assert "IMSI 901280000012345" in out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_sim_removed_after_attach(dialect):
    with emulated_modem(dialect) as emu, udp_echo_server() as echo:
        out = fault_after_attach(
            emu,
            echo,
            emu.remove_sim,
            """
engine.poll(200)
try:
    s.sendto(b'x', '127.0.0.1', ECHO_PORT)
    print('SENT')
except modem.SocketError as e:
    print('SEND-FAILED')
try:
    m.wait_registered(2000)
except modem.SimError as e:
    print('SIM', e.state)
print('STATE', m.sim_state())
""",
        )
    assert "SEND-FAILED" in out
    assert "SIM ABSENT" in out and "STATE ABSENT" in out
    assert echo.received == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_swapped_sim_shows_a_new_iccid(dialect):
    with emulated_modem(dialect) as emu:
        swapped = Sim(iccid="89882806660000099996", imsi="901280000099999")
        # Swapped between two commands: the modem restarts, as most do on a SIM swap.
        at_pause = lambda: restart_while_paused(emu, before=lambda: setattr(emu, "sim", swapped))  # noqa: E731
        out = run_driver_paused(
            emu,
            """
m.init()
print('BEFORE', m.iccid())
pause()
"""
            + AWAIT_RESTART
            + """
print('AFTER', m.iccid(), m.imsi())
""",
            at_pause,
        )
    assert "BEFORE 89882806660000012346" in out
    assert "AFTER 89882806660000099996 901280000099999" in out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_loss_of_registration_then_regain(dialect):
    with emulated_modem(dialect) as emu, udp_echo_server() as echo:

        def lose():
            # Lost before the marker's OK; regained a while after the driver's first registration
            # query, which comes after the send that fails: a timer started at the loss would race
            # that send on a loaded machine.
            emu.reg.set(2)
            emu.on_command("AT+CEREG?", lambda: emu._after(0.5, emu._registered))

        out = fault_after_attach(
            emu,
            echo,
            lose,
            """
engine.poll(100)
print('STAT', m.reg_stat)
try:
    s.sendto(b'lost', '127.0.0.1', ECHO_PORT)
except modem.SocketError:
    print('SEND-FAILED')
print('REG', m.wait_registered(5000))
s.sendto(b'back', '127.0.0.1', ECHO_PORT)
print('ECHO', s.recvfrom(20000)[0])
""",
        )
    assert "STAT 2" in out and "SEND-FAILED" in out and "REG home" in out and "ECHO b'back'" in out


# Sends SENT datagrams, then takes the EXPECTED echoes as they come (the bound only stops a hang: a
# loaded machine may be slow to bring them), then checks for a stray one after them.
UDP_SCRIPT = """
attach()
s = m.open_udp()
for i in range(SENT):
    s.sendto(b'd%d' % i, '127.0.0.1', ECHO_PORT)
got = []
while len(got) < EXPECTED:
    r = s.recvfrom(20000)
    if r is None:
        break
    got.append(r[0])
r = s.recvfrom(600)
while r is not None:
    got.append(r[0])
    r = s.recvfrom(600)
print('GOT', got)
"""


def udp_script(sent: int, expected: int) -> str:
    return UDP_SCRIPT.replace("SENT", str(sent)).replace("EXPECTED", str(expected))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_udp_loss_duplication_reordering(dialect):
    with emulated_modem(dialect) as emu, udp_echo_server() as echo:
        emu.udp.loss_out = 1  # d0 never leaves
        emu.udp.loss_in = 1  # d1's echo is lost on the way back
        emu.udp.duplicate_in = 1  # d2 comes back twice
        emu.udp.reorder_in = 1  # d3 is held back behind d4
        out = run_driver(emu, udp_script(5, 4), echo_port=echo.port)
    assert [d for d, _ in echo.received] == [b"d1", b"d2", b"d3", b"d4"]
    assert "GOT [b'd2', b'd2', b'd4', b'd3']" in out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_modem_receive_buffer_overflow(dialect):
    with emulated_modem(dialect) as emu, udp_echo_server() as echo:
        emu.udp.rx_limit = 2

        def all_echoes_in():
            # In the emulator's thread, before it answers the first read: take in the echoes
            # still on their way (on a loaded machine the driver's 300 ms poll may not see them).
            deadline = time.monotonic() + 10
            while emu.udp.overflows < 3 and time.monotonic() < deadline:
                ready, _, _ = select.select(emu.sockets.readable(), [], [], 0.05)
                emu.sockets.service(ready)

        emu.on_command(RECV_COMMAND[dialect], all_echoes_in)
        out = run_driver(
            emu,
            udp_script(5, 2)
            + "s.sendto(b'later', '127.0.0.1', ECHO_PORT)\nprint('LATER', s.recvfrom(3000)[0])",
            echo_port=echo.port,
        )
    assert "GOT [b'd0', b'd1']" in out
    assert emu.udp.overflows == 3
    assert "LATER b'later'" in out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_over_long_line_is_discarded_and_counted(dialect):
    with emulated_modem(dialect) as emu, udp_echo_server() as echo:
        emu.on_command("AT+CEREG?", lambda: emu._write(b"\r\n+JUNK: " + b"7" * 5000 + b"\r\n"))
        out = round_trip(emu, echo, extra="print('OVERFLOWS', engine.reader.overflows)")
    assert "ECHO b'ping' True" in out and "OVERFLOWS 1" in out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("until", ["cfun", "pin"])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_hung_modem_escalates(dialect, until):
    with emulated_modem(dialect) as emu, udp_echo_server() as echo:
        emu.on_command("AT+CSQ", lambda: emu.hang(until))
        out = run_driver(
            emu,
            """
engine.reset_wait_ms = 1500
attach()
s = m.open_udp()
try:
    engine.command(b'AT+CSQ', 500)
except at.AtTimeout as e:
    print('TIMEOUT', e.command)
t = runtime.ticks_ms()
print('STEP', m.recover(), runtime.ticks_diff(runtime.ticks_ms(), t) < 30000)
s.sendto(b'alive', '127.0.0.1', ECHO_PORT)
print('ECHO', s.recvfrom(20000)[0])
""",
            echo_port=echo.port,
        )
    assert "TIMEOUT b'AT+CSQ'" in out
    assert f"STEP {until} True" in out  # bounded: the ladder ends (a generous bound, for a loaded machine)
    assert "ECHO b'alive'" in out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_dead_modem_without_reset_pin_fails_typed_and_bounded(dialect):
    with emulated_modem(dialect) as emu:
        emu.on_command("AT+CSQ", lambda: emu.hang("pin"))
        out = run_driver(
            emu,
            """
engine._reset_pin = None
engine.power_key = None
engine.reset_wait_ms = 1500
m.init()
t = runtime.ticks_ms()
try:
    m.signal()
except at.ModemUnresponsive as e:
    print('UNRESPONSIVE', runtime.ticks_diff(runtime.ticks_ms(), t) < 30000)
""",
        )
    assert "UNRESPONSIVE True" in out
    assert emu.commands_matching(emu.vendor.reset_command)  # e.g. u-blox's AT+CFUN=15


@pytest.mark.timeout(60)
# Not nrf91: the nRF SLM has no prompt (its payload is hex inside the command), so no prompt to lose.
@pytest.mark.parametrize("dialect", ["bg96", "sim7080", "sara-r4"])
def test_lost_prompt_does_not_swallow_recovery(dialect):
    with emulated_modem(dialect) as emu, udp_echo_server() as echo:
        emu.drop_prompt(SEND_COMMAND[dialect])
        out = run_driver(
            emu,
            """
attach()
s = m.open_udp()
s.sendto(b'ping', '127.0.0.1', ECHO_PORT)
print('ECHOES', [s.recvfrom(2000)[0] for _ in range(2)])
print('RECOVERIES', engine.recoveries)
""",
            echo_port=echo.port,
        )
    assert "ECHOES [b'\\x00\\x00\\x00\\x00', b'ping']" in out
    assert "RECOVERIES 1" in out  # a resync was enough: no reset
    assert not emu.commands_matching("AT+CFUN=1,1") and emu.reboots == 0
    # What left: the NUL filler that completed the modem's fixed-length read, then the datagram.
    assert [d for d, _ in echo.received] == [bytes(4), b"ping"]



@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_network_deactivates_the_pdp_context(dialect):
    with emulated_modem(dialect) as emu, udp_echo_server() as echo:
        out = fault_after_attach(
            emu,
            echo,
            emu.deactivate_pdp,
            """
engine.wait_for(lambda: d.pdp_lost, 1000)
s.sendto(b'again', '127.0.0.1', ECHO_PORT)
print('ECHO', s.recvfrom(20000)[0])
""",
        )
    assert "ECHO b'again'" in out
    assert len(emu.commands_matching(ACTIVATE[dialect])) == 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_reboot_after_the_first_reply_line(dialect):
    # The modem restarts in the middle of a receive reply: header out, payload/OK never come.
    with emulated_modem(dialect) as emu, udp_echo_server() as echo:
        emu.reboot_during(RECV_COMMAND[dialect], after_lines=1)
        out = run_driver(
            emu,
            """
attach()
s = m.open_udp()
s.sendto(b'ping', '127.0.0.1', ECHO_PORT)
print('FIRST', s.recvfrom(1500))
s.sendto(b'again', '127.0.0.1', ECHO_PORT)
print('ECHO', s.recvfrom(20000)[0])
""",
            echo_port=echo.port,
        )
        assert emu.reboots == 1
        assert len(emu.commands_matching("ATE0")) == 2  # re-initialised after the restart
    assert "FIRST None" in out  # the datagram died with the modem's buffer
    assert "ECHO b'again'" in out
