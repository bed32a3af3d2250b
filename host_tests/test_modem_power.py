"""Power-up and the power key: Modem.power_up() switches an off modem on with the board's power key
(only if nothing answers AT: the key toggles) and turns the radio on (the nRF SLM starts at
CFUN=0); a hung modem on a board without a reset pin is power-cycled as the last recovery step; an
unsolicited "+CFUN: 1" while idle is a restart. The driver runs on the MicroPython unix port."""

import pytest
from modem_fixtures import DIALECTS, emulated_modem, run_driver, udp_echo_server

ATTACH_AND_ECHO = """
attach()
s = m.open_udp()
s.sendto(b'up', '127.0.0.1', ECHO_PORT)
print('ECHO', s.recvfrom(20000)[0])
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_power_up_switches_an_off_modem_on_and_the_radio_on(dialect):
    with emulated_modem(dialect, powered=False) as emu, udp_echo_server() as echo:
        out = run_driver(emu, ATTACH_AND_ECHO, echo_port=echo.port)
        assert emu.power_key_pulses == 1 and emu.powered
        # The nRF SLM boots with its radio off: power_up asked, and switched it on.
        assert emu.commands_matching("AT+CFUN?")
        assert bool(emu.commands_matching("AT+CFUN=1")) == (dialect == "nrf91")
    assert "ECHO b'up'" in out


@pytest.mark.timeout(60)
def test_power_up_never_pulses_a_modem_that_answers():
    with emulated_modem("bg96") as emu:
        out = run_driver(emu, "m.power_up()\nprint('REG', m.wait_registered(3000))")
        assert emu.power_key_pulses == 0  # a pulse would have switched it off
    assert "REG home" in out


@pytest.mark.timeout(60)
def test_nrf91_emulator_boots_with_the_radio_off():
    # What power_up is for: without AT+CFUN=1 the SLM never registers.
    with emulated_modem("nrf91") as emu:
        out = run_driver(
            emu,
            """
print(engine.command(b'AT+CFUN?', prefix=b'+CFUN:'))
engine.command(b'AT+CEREG=2')
print('STAT', m.registration())
""",
        )
    assert "[b'+CFUN: 0']" in out and "STAT 0" in out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_hung_modem_without_reset_pin_is_power_cycled(dialect):
    with emulated_modem(dialect) as emu, udp_echo_server() as echo:
        emu.on_command("AT+CSQ", lambda: emu.hang("pin"))  # only a hardware line helps
        out = run_driver(
            emu,
            """
engine._reset_pin = None
engine.reset_wait_ms = 1200
attach()
s = m.open_udp()
try:
    engine.command(b'AT+CSQ', 300)
except at.AtTimeout:
    print('HUNG')
t = runtime.ticks_ms()
print('STEP', m.recover(), runtime.ticks_diff(runtime.ticks_ms(), t) < 30000)
s.sendto(b'alive', '127.0.0.1', ECHO_PORT)
print('ECHO', s.recvfrom(20000)[0])
""",
            echo_port=echo.port,
        )
        # The first pulse switched the hung modem off, the second one on again.
        assert emu.power_key_pulses == 2
    assert "HUNG" in out and "STEP pwrkey True" in out and "ECHO b'alive'" in out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", ["bg96", "sara-r4"])
def test_unsolicited_cfun_1_while_idle_is_a_restart(dialect):
    # The modem restarts, its usual boot line (RDY) is lost; only "+CFUN: 1" arrives.
    with emulated_modem(dialect) as emu, udp_echo_server() as echo:
        emu.on_command("AT+CSQ", lambda: emu._after(0.1, lambda: emu._reboot(["+CFUN: 1"])))
        out = run_driver(
            emu,
            """
attach()
s = m.open_udp()
engine.command(b'AT+CSQ')
engine.wait_for(lambda: engine.rebooted, 30000)
print('REBOOTED', engine.rebooted, engine.reboots)
s.sendto(b'again', '127.0.0.1', ECHO_PORT)
print('ECHO', s.recvfrom(20000)[0])
""",
            echo_port=echo.port,
        )
        assert len(emu.commands_matching("ATE0")) == 2  # re-initialised
    assert "REBOOTED True 1" in out and "ECHO b'again'" in out


@pytest.mark.timeout(60)
def test_cfun_1_shortly_after_rdy_is_the_same_restart():
    # A real BG96 prints "+CFUN: 1" a while after RDY; the driver may have re-initialised between.
    with emulated_modem("bg96") as emu:

        def reboot_slowly():
            emu._reboot(["RDY"])
            emu._after(0.5, lambda: emu._urc("+CFUN: 1"))

        emu.on_command("AT+CSQ", lambda: emu._after(0.1, reboot_slowly))
        out = run_driver(
            emu,
            """
m.init()
engine.command(b'AT+CSQ')
engine.wait_for(lambda: engine.rebooted, 30000)
m.init()
engine.wait_for(lambda: m.cfun_events, 30000)
print('CFUN', m.cfun_events, 'REBOOTS', engine.reboots, engine.rebooted)
""",
        )
    assert "CFUN 1 REBOOTS 1 False" in out
