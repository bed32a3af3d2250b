"""Readings and tamper events from the emulated sensor and switch to the hub, end to end: firmware on
the MicroPython unix port or CPython (MicroPython and CircuitPython paths) -> outbox -> sealed
datagrams over real UDP -> the reference hub. The tamper report is sealed before the keys are wiped."""

import os
import struct

import pytest
from cgdev.bundle import DEVICE_LIBS, REQUIREMENTS, bundle, read_names, read_pins
from harness import MP_SUPPORT
from hubkit import KEY_ID, ROOT, lines, make_hub

CPY_SHIM = MP_SUPPORT / "cpy_shim"

DEVICE = """
import sys
import hostudp, i2cemu, sht4xemu, gpioemu
from cellguard import keys, message, outbox, report, runtime, seqstore, sensors, tamper
PORT = int(sys.argv[-1])
keys.provision(bytes.fromhex(ROOT_HEX), 'dev-1', KEY_ID)
state = runtime.path_join(runtime.fs_root(), 'state')
counter = seqstore.SequenceCounter(state + '/msg_seq')
ch = message.Channel(keys.derive, counter, key_id=keys.key_id(), mode=message.ENCRYPT, state_dir=state)
ob = outbox.Outbox(ch, hostudp.HostUdp(), '127.0.0.1', PORT, base_ms=50, ceiling_ms=200)

bus = i2cemu.default_bus()
emu = sht4xemu.Sht4x(temperature_c=23.25, humidity_rh=40.0)
bus.attach(0x44, emu)
if PATH == 'circuitpython':
    import board, busio, digitalio
    i2c = busio.I2C(board.SCL, board.SDA)
    pin = digitalio.DigitalInOut(board.D5)
else:
    from cellguard.i2cbus import LockedI2C
    i2c = LockedI2C(i2cemu.MachineI2C(bus))
    pin = gpioemu.Pin('D5')
switch = gpioemu.line('D5', 0)
mon = sensors.SensorMonitor(sensors.sht4x_opener(i2c))
for fault in (None, 'crc', None):
    if fault == 'crc':
        emu.corrupt_next = 1
    report.send_reading(ob, mon.read())
tm = tamper.TamperMonitor(pin, wipe_keys=True, on_tamper=[report.tamper_reporter(ob)])
switch.drive(1)
event = tm.poll()
print('wiped', event['wiped'], keys.provisioned())
for _ in range(200):
    if ob.poll(50) == 0:
        break
print('pending', ob.pending())
"""


@pytest.fixture(scope="module")
def app_lib(tmp_path_factory):
    out = tmp_path_factory.mktemp("app") / "lib"
    bundle(out, read_names(DEVICE_LIBS), read_pins(REQUIREMENTS))
    return out


@pytest.mark.parametrize("path", ["micropython", "circuitpython"])
def test_readings_and_tamper_reach_the_hub(runtime, path, app_lib, tmp_path):
    from cghub.server import HubServer

    hub = make_hub(tmp_path)
    fs = tmp_path / "fs"
    fs.mkdir()
    script = "PATH = %r\n" % path + DEVICE.replace("ROOT_HEX", repr(ROOT.hex())).replace("KEY_ID", str(KEY_ID))
    extra = (CPY_SHIM, app_lib) if path == "circuitpython" else (app_lib,)
    with HubServer(hub) as server:
        out = runtime.run(
            script, args=(server.port,), extra_paths=extra, heapsize="192K", timeout=60,  # every module compiled from source here; .mpy on a board
            env={**os.environ, "CELLGUARD_FS": str(fs)},
        )
    assert out.split() == ["wiped", "True", "False", "pending", "0"]

    from cellguard import reading

    got = lines(hub)
    readings = [reading.decode(bytes.fromhex(x["payload_hex"])) for x in got if x["type"] == "reading"]
    assert [r.quality_name for r in readings] == ["ok", "crc", "ok"]
    assert abs(readings[0].temperature_c - 23.25) < 0.05 and abs(readings[0].humidity_rh - 40.0) < 0.05
    assert readings[1].temperature_c is None  # a CRC error never reaches the hub as a value
    tampers = [bytes.fromhex(x["payload_hex"]) for x in got if x["type"] == "tamper"]
    assert len(tampers) == 1
    code, seq, _t, flags = struct.unpack(">BIIB", tampers[0])
    assert (code, seq, flags) == (16, 1, 1)  # enclosure opened, tamper #1, keys about to be wiped
    assert all(x["mode"] == "encrypt" for x in got)
    assert not (fs / "keys" / "root").exists()


# ---- the application loop with the board profile's sensor and tamper switch --------------------------
APP_WIRED = """
import sys
sys.path.insert(0, %(lib)r)
import i2cemu, sht4xemu, gpioemu, machineemu
emu_sensor = sht4xemu.Sht4x(temperature_c=23.25, humidity_rh=40.0)
i2cemu.default_bus().attach(0x44, emu_sensor)
if runtime.NAME == 'circuitpython':  # busio.I2C, keypad and digitalio from the shim
    SENSOR, PIN = {'type': 'sht4x', 'scl': 'SCL', 'sda': 'SDA', 'address': 68}, 'D9'
else:
    sys.modules['machine'] = machineemu  # the profile's builders open the emulated bus and pin
    SENSOR, PIN = {'type': 'sht4x', 'bus': 1, 'sda': 2, 'scl': 3, 'address': 68}, 15
switch = gpioemu.line(PIN, 0)  # the lid is on: the switch holds the pin low
from cellguard import app, board, console, keys, status
profile = board.Profile({'name': 'wired', 'sensor': SENSOR,
                         'tamper': {'pin': PIN, 'open_level': 1, 'pull': 'up', 'wipe_keys': %(wipe)r}})
a = app.App(m, '127.0.0.1', %(hub_port)d, apn='iot.test', sensor=profile.sensor_monitor(),
            tamper=profile.tamper_monitor(), interval_ms=300, version='t', retry_ms=200)

def run(until, ms=60000):  # ends when `until` holds; the bound only stops a hang (a loaded machine is slow)
    t = runtime.ticks_ms()
    while runtime.ticks_diff(runtime.ticks_ms(), t) < ms and not until():
        a.step(100)
    return until()

print('READINGS', run(lambda: a.healthy and a.box.stats['acked'] >= 3 and a.box.pending() == 0))
emu_sensor.corrupt_next = 1  # the next reading fails its CRC: it goes as a fault
print('CRC', run(lambda: status.get('sensor', 'crc') == 1 and a.box.pending() == 0))
switch.drive(1)  # the lid comes off
if %(wipe)r:
    print('TAMPER', run(lambda: a.state == 'unprovisioned'))
else:
    print('TAMPER', run(lambda: status.get('tamper', 'seq') == 1 and a.box.pending() == 0))
print('STATE', a.state, 'PROVISIONED', keys.provisioned())
print('RUNTIME', runtime.NAME, type(a.tamper._pin).__name__)
print('LOG', open(runtime.path_join(runtime.fs_root(), 'state/tamper.log')).read().strip())
for line in console.render_status(console.snapshot()).split('\\n'):
    if line.startswith(('sensor', 'tamper')):
        print('PAGE', line)
"""


def _py_lib(tmp_path):
    # CircuitPython takes the drivers as .py (its .mpy is another format), as tools/flash.py sends them.
    out = tmp_path / "cpy-lib"
    bundle(out, read_names(DEVICE_LIBS, "circuitpython"), read_pins(REQUIREMENTS))
    return out


@pytest.fixture(scope="module")
def mpy_lib(tmp_path_factory):
    # As an image carries them (.mpy): from source the drivers' compile would crowd the app's heap.
    out = tmp_path_factory.mktemp("app-mpy") / "lib"
    bundle(out, read_names(DEVICE_LIBS), read_pins(REQUIREMENTS), mpy=True)
    return out


def _run_unit(unit, emu, body, path):
    # One boot of the unit on the unix port; on the CircuitPython path through the shim, its modem
    # UART a busio.UART on the emulator's pty.
    from harness import run_micropython
    from modem_fixtures import driver_script
    from test_simlock import MOUNT, SAVE

    if path == "micropython":
        return unit.run(emu, body)
    script = driver_script(emu, MOUNT % {"image": unit.image} + body + SAVE % {"image": unit.image})
    script = script.replace("runtime.open_uart(PTY)", "runtime.open_uart(PTY, tx='TX', rx='RX')")
    return run_micropython(script, heapsize="512K", timeout=150, extra_paths=(CPY_SHIM,),
                           env={**os.environ, "CELLGUARD_SHIM_UART": emu.path})


@pytest.mark.timeout(180)
@pytest.mark.parametrize("path", ["micropython", "circuitpython"])
@pytest.mark.parametrize("wipe", [False, True])
def test_app_polls_the_profiles_sensor_and_tamper_switch(tmp_path, mpy_lib, wipe, path):
    import io
    import json

    from cghub import server as hubmod
    from modem_fixtures import emulated_modem
    from test_app import fresh_sim
    from test_simlock import Unit

    lib = mpy_lib if path == "micropython" else _py_lib(tmp_path)

    unit = Unit(tmp_path)
    sim = fresh_sim()
    with emulated_modem("bg96", sim=sim) as emu:
        unit.provision(emu, device_id="wired-1")
    sim.unlocked = False
    store = hubmod.HubStore(unit.hub_db)
    hub = hubmod.Hub(store, io.StringIO())
    with hubmod.HubServer(hub) as server, emulated_modem("bg96", sim=sim) as emu:
        out = _run_unit(unit, emu, APP_WIRED % {"lib": str(lib), "wipe": wipe, "hub_port": server.port}, path)
    got = dict(line.split(" ", 1) for line in out.splitlines() if line.split(" ", 1)[0] in
               ("READINGS", "CRC", "TAMPER", "STATE", "LOG", "RUNTIME"))
    page = [line[5:] for line in out.splitlines() if line.startswith("PAGE ")]
    assert got["READINGS"] == "True" and got["CRC"] == "True" and got["TAMPER"] == "True", out
    assert got["RUNTIME"] == ("micropython Pin" if path == "micropython" else "circuitpython KeysInput")

    from cellguard import reading

    msgs = [json.loads(x) for x in hub.out.getvalue().splitlines()]
    readings = [reading.decode(bytes.fromhex(m["payload_hex"])) for m in msgs if m["type"] == "reading"]
    qualities = [r.quality_name for r in readings]
    assert qualities[:2] == ["ok", "ok"] and "crc" in qualities, qualities
    assert all(abs(r.temperature_c - 23.25) < 0.05 for r in readings if r.good)
    assert all(r.temperature_c is None for r in readings if r.quality_name == "crc")
    tampers = [bytes.fromhex(m["payload_hex"]) for m in msgs if m["type"] == "tamper"]
    assert len(tampers) == 1, msgs
    code, seq, _t, flags = struct.unpack(">BIIB", tampers[0])
    assert (code, seq, flags) == (16, 1, 1 if wipe else 0)
    seq_s, _t, source, wiped = got["LOG"].split()
    assert (seq_s, source, wiped) == ("1", "enclosure", "1" if wipe else "0")  # persisted
    if wipe:
        assert got["STATE"] == "unprovisioned PROVISIONED False"
    else:
        assert got["STATE"] == "online PROVISIONED True"
    assert page[0].startswith("sensor      sht4x  quality ")
    assert page[1].startswith("tamper      open  last #1 ") and page[1].endswith("keys wiped %s" % ("yes" if wipe else "no"))
