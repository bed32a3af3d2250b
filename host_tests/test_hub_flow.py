"""Readings and tamper events from the emulated sensor and switch to the hub, end to end: firmware on
the MicroPython unix port or CPython (MicroPython and CircuitPython paths) -> outbox -> sealed
datagrams over real UDP -> the reference hub. The tamper report is sealed before the keys are wiped."""

import os
import struct

import pytest
from bundle_libs import DEVICE_LIBS, REQUIREMENTS, bundle, read_names, read_pins
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
    from hub import HubServer

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
