"""The repository's CircuitPython board profile (boards/feather-rp2040-nrf9160/board.json), built part
by part through the CircuitPython shim on the MicroPython unix port: board.load() reads the real
file, its modem UART is a busio.UART on the emulated nRF91 (SLM) modem's pty, its SHT4x sensor and
enclosure switch come from the profile's own builders (busio.I2C on the emulated SHT4x, keypad on
the emulated GPIO), and the application sends a HELLO and a good reading that the hub accepts."""

import io
import json
import os

import pytest
from harness import MP_SUPPORT, REPO, run_micropython
from modem_fixtures import driver_script, emulated_modem
from test_app import fresh_sim
from test_hub_flow import _py_lib
from test_simlock import MOUNT, SAVE, Unit

CPY_SHIM = MP_SUPPORT / "cpy_shim"
FEATHER = REPO / "boards" / "feather-rp2040-nrf9160" / "board.json"

# Before the driver prelude: the profile, so the prelude's UART is the profile's (busio, TX/RX).
PROFILE = "from cellguard import board\nprofile = board.load(%r)\n"

APP = """
import sys
sys.path.insert(0, %(lib)r)  # the pinned drivers as .py, as tools/flash.py sends them to CircuitPython
import i2cemu, sht4xemu, gpioemu
emu_sensor = sht4xemu.Sht4x(temperature_c=21.5, humidity_rh=55.0)
i2cemu.default_bus().attach(profile.sensor_conf['address'], emu_sensor)
switch = gpioemu.line(profile.tamper_conf['pin'], 0)  # the lid is on: the switch holds the pin low
from cellguard import app, status
a = app.App(m, '127.0.0.1', %(hub_port)d, apn='iot.test', sensor=profile.sensor_monitor(),
            tamper=profile.tamper_monitor(), interval_ms=300, version='t', retry_ms=200)
t = runtime.ticks_ms()
while runtime.ticks_diff(runtime.ticks_ms(), t) < 60000 and not (  # the bound only stops a hang
        a.healthy and a.box.stats['acked'] >= 2 and a.box.pending() == 0):
    a.step(100)
print('HEALTHY', a.healthy, a.box.stats['acked'], a.box.pending())
print('PARTS', runtime.NAME, profile.name, profile.dialect, type(engine._stream).__name__,
      type(a.tamper._pin).__name__, status.get('sensor', 'quality'))
"""


@pytest.mark.timeout(180)
def test_feather_profile_reports_to_the_hub_through_the_circuitpython_paths(tmp_path):
    from cghub import server as hubmod

    profile = json.loads(FEATHER.read_text())
    assert profile["runtime"]["name"] == "circuitpython" and profile["modem"]["dialect"] == "nrf91"
    unit = Unit(tmp_path)
    sim = fresh_sim()
    with emulated_modem("nrf91", sim=sim) as emu:  # the factory's provisioning (cellguard provision's flow)
        unit.provision(emu, device_id="feather-1")
    sim.unlocked = False  # power cycle
    hub = hubmod.Hub(hubmod.HubStore(unit.hub_db), io.StringIO())
    with hubmod.HubServer(hub) as server, emulated_modem("nrf91", sim=sim) as emu:
        body = MOUNT % {"image": unit.image} + APP % {"lib": str(_py_lib(tmp_path)), "hub_port": server.port}
        script = PROFILE % str(FEATHER) + driver_script(emu, body + SAVE % {"image": unit.image})
        script = script.replace("runtime.open_uart(PTY)", "profile.open_uart()")
        out = run_micropython(script, heapsize="512K", timeout=150, extra_paths=(CPY_SHIM,),
                              env={**os.environ, "CELLGUARD_SHIM_UART": emu.path})
        nrf91_sockets = emu.commands_matching("AT#XSOCKET")
    got = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.splitlines()
           if line.split(" ", 1)[0] in ("HEALTHY", "PARTS")}
    assert got.get("HEALTHY", "").startswith("True "), out[-3000:]
    # every part built from the feather profile, on CircuitPython's module names
    assert got["PARTS"] == "circuitpython feather-rp2040-nrf9160 nrf91 BusioUartStream KeysInput ok"
    assert nrf91_sockets, "the nRF91 dialect's socket commands went over the busio UART"

    from cellguard import reading

    msgs = [json.loads(x) for x in hub.out.getvalue().splitlines()]
    kinds = [m["type"] for m in msgs]
    assert kinds[0] == "hello", kinds  # the HELLO first, accepted by the hub
    readings = [reading.decode(bytes.fromhex(m["payload_hex"])) for m in msgs if m["type"] == "reading"]
    assert readings and readings[0].quality_name == "ok"
    assert abs(readings[0].temperature_c - 21.5) < 0.05 and abs(readings[0].humidity_rh - 55.0) < 0.05
    assert all(m["device"] == "feather-1" and m["mode"] == "encrypt" for m in msgs)
