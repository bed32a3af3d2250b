"""Driver settings on all four dialects, on the MicroPython unix port against the emulator: APN
credentials (the emulated network checks them), PSM and eDRX on and off, 'unknown' signal values,
and the PIN -> PUK path (three wrong PINs, then the PUK restores the SIM)."""

import pytest
from modem_fixtures import DIALECTS, Network, Sim, emulated_modem, run_driver

PDP_CID = {"nrf91": 0, "bg96": 1, "sim7080": 0, "sara-r4": 1}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_apn_credentials_reach_the_network(dialect):
    with emulated_modem(dialect, network=Network(credentials=("user1", "pw-right"))) as emu:
        out = run_driver(
            emu,
            """
m.power_up()
m.wait_registered(5000)
m.set_apn('iot.test', 'user1', 'pw-wrong')
try:
    m.activate_pdp()
except at.CmeError as e:
    print('REFUSED', e.code)
m.set_apn('iot.test', 'user1', 'pw-right')
m.activate_pdp()
print('ACTIVE', m.pdp_active())
""",
        )
        ctx = emu.pdp[PDP_CID[dialect]]
        assert (ctx["apn"], ctx["user"], ctx["password"]) == ("iot.test", "user1", "pw-right")
    assert "REFUSED 149" in out  # PDP authentication failure
    assert "ACTIVE True" in out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_psm_edrx_on_and_off_and_unknown_signal(dialect):
    with emulated_modem(dialect, network=Network(rsrp=255, rsrq=255, rssi=99)) as emu:
        out = run_driver(
            emu,
            """
m.init()
m.set_psm(True, 3600, 60)
print('PSM', m.psm())
m.set_psm(False)
print('PSM', m.psm())
m.set_edrx(True, 4, '0101')
m.set_edrx(False)
print('SIGNAL', sorted(m.signal().items()))
""",
        )
        assert emu.commands_matching('AT+CEDRXS=2,4,"0101"')
        assert emu.edrx == "0,4" and emu.psm == "0"
    # TAU 3600 s = 6 x 10 min (unit 000), active time 60 s = 30 x 2 s (unit 000).
    assert "PSM ['1', '', '', '00000110', '00011110']" in out
    assert "PSM ['0']" in out
    # +CESQ 255 and +CSQ 99 mean "not known": None, not a made-up dBm figure.
    assert "SIGNAL [('rsrp_dbm', None), ('rsrq_db', None), ('rssi_dbm', None)]" in out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_three_wrong_pins_need_the_puk_which_restores_the_sim(dialect):
    with emulated_modem(dialect, sim=Sim(pin_enabled=True)) as emu:
        out = run_driver(
            emu,
            """
m.init()
for pin in ('0000', '1111', '2222'):
    try:
        m.enter_pin(pin)
    except at.CmeError as e:
        print('WRONG', e.code)
print('STATE', m.sim_state(), m.pin_retries())
try:
    m.imsi()
except at.CmeError as e:
    print('IMSI', e.code)
m.enter_puk('12345678', '2468')
print('STATE', m.sim_state(), m.pin_retries())
print('REG', m.wait_registered(5000))
""",
        )
        assert emu.sim.pin == "2468"
    assert out.count("WRONG 16") == 2 and "WRONG 12" in out  # 12: SIM PUK required
    assert "STATE SIM PUK (0, 10)" in out
    assert "IMSI 12" in out
    assert "STATE READY (3, 10)" in out
    assert "REG home" in out
