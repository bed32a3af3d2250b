"""Readings from the emulated SHT4x through the pinned Adafruit driver and adafruit_bus_device, on
MicroPython (machine.I2C through cellguard.i2cbus.LockedI2C) and on the CircuitPython path (busio.I2C
from the shim), each on the unix port and CPython; every sensor fault gives its documented quality."""

import json

import pytest
from cgdev.bundle import DEVICE_LIBS, REQUIREMENTS, bundle, read_names, read_pins
from harness import MP_SUPPORT

CPY_SHIM = MP_SUPPORT / "cpy_shim"


@pytest.fixture(scope="module")
def app_lib(tmp_path_factory):
    """The device libraries bundled from the installed pins, as they go into the app image."""
    out = tmp_path_factory.mktemp("app") / "lib"
    bundle(out, read_names(DEVICE_LIBS), read_pins(REQUIREMENTS))
    return out


def test_bundle_holds_the_pinned_libraries(app_lib):
    manifest = json.loads((app_lib / "BUNDLE.json").read_text())
    files = {m["file"]: m["version"] for m in manifest}
    assert files["adafruit_sht4x.py"] == "1.0.27"
    assert files["adafruit_bus_device/i2c_device.py"] == "5.2.17"
    assert (app_lib / "adafruit_bus_device" / "i2c_device.py").is_file()
    assert not list(app_lib.rglob("*.pyc"))


def test_bundle_refuses_a_version_that_is_not_the_pin(tmp_path):
    from cgdev.bundle import BundleError

    with pytest.raises(BundleError, match="pinned"):
        bundle(tmp_path / "lib", ["adafruit-circuitpython-sht4x"], {"adafruit-circuitpython-sht4x": "0.0.1"})
    with pytest.raises(BundleError, match="not pinned"):
        bundle(tmp_path / "lib", ["adafruit-circuitpython-sht4x"], {})


def test_bundle_compiles_mpy_that_imports(tmp_path, mp):
    out = tmp_path / "lib"
    bundle(out, read_names(DEVICE_LIBS), read_pins(REQUIREMENTS), mpy=True)
    assert (out / "adafruit_sht4x.mpy").is_file()
    assert mp.run("import adafruit_sht4x\nprint(adafruit_sht4x.__version__)", extra_paths=(out,)).strip() == "1.0.27"


SCENARIO = """
import i2cemu, sht4xemu
from cellguard import events, reading, sensors
bus = i2cemu.default_bus()
emu = sht4xemu.Sht4x(temperature_c=21.5, humidity_rh=45.0)
if PATH == 'busio':
    import board, busio
    i2c = busio.I2C(board.SCL, board.SDA)
else:
    from cellguard.i2cbus import LockedI2C
    i2c = LockedI2C(i2cemu.MachineI2C(bus))
seen = []
mon = sensors.SensorMonitor(sensors.sht4x_opener(i2c), on_event=lambda n, q: seen.append(q))

def step(label, n=1):
    out = []
    for _ in range(n):
        r = mon.read()
        back = reading.decode(reading.encode(r))
        assert back.quality == r.quality
        if r.temperature_c is None:
            assert back.temperature_c is None
        else:
            assert abs(back.temperature_c - r.temperature_c) <= 0.005
        if r.good:
            assert abs(r.temperature_c - emu.temperature_c) < 0.05, r
            assert abs(r.humidity_rh - emu.humidity_rh) < 0.05, r
        out.append(r.quality_name)
    print(label, ' '.join(out))

step('absent-at-start')
bus.attach(0x44, emu)
step('normal', 3)
emu.corrupt_next = 1
step('crc', 2)
emu.stuck = True
step('stuck', 6)
emu.stuck = False
step('unstuck')
emu.temperature_c = 60.0
step('jump', 3)
emu.temperature_c = 130.0
step('range')
emu.temperature_c = 60.0
step('back')
bus.detach(0x44)
step('unplugged', 2)
bus.attach(0x44, emu)
step('replugged')
emu.nack_next = 1
step('glitch', 2)
print('events', seen)
print('counts', mon.counts)
print('log', events.recent()[-1])
print('status', events.snapshot()['sensor']['quality'])
"""


@pytest.mark.parametrize("path", ["machine", "busio"])
def test_every_fault_gets_its_quality(runtime, path, app_lib):
    extra = (CPY_SHIM, app_lib) if path == "busio" else (app_lib,)
    out = runtime.run("PATH = %r\n" % path + SCENARIO, extra_paths=extra, timeout=60)
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert lines["absent-at-start"] == "absent"
    assert lines["normal"] == "ok ok ok"
    assert lines["crc"] == "crc ok"
    assert lines["stuck"] == "ok ok ok ok ok stuck"
    assert lines["unstuck"] == "ok"
    assert lines["jump"] == "jump jump ok"  # the third agreeing reading confirms the new level
    assert lines["range"] == "range"
    assert lines["back"] == "ok"
    assert lines["unplugged"] == "absent absent"
    assert lines["replugged"] == "ok"
    assert lines["glitch"] == "bus ok"
    assert lines["events"] == str(
        ["absent", "ok", "crc", "ok", "stuck", "ok", "jump", "ok", "range", "ok", "absent", "ok", "bus", "ok"]
    )
    assert lines["log"] == "sensor sht4x: ok"
    assert lines["status"] == "ok"


def test_driver_talks_sht4x_commands_with_crc(runtime, app_lib):
    out = runtime.run(
        "import i2cemu, sht4xemu\n"
        "from cellguard.i2cbus import LockedI2C\n"
        "import adafruit_sht4x\n"
        "bus = i2cemu.Bus(); emu = sht4xemu.Sht4x(serial=0x1234ABCD, temperature_c=-10.25, humidity_rh=80.5, noise_lsb=0)\n"
        "bus.attach(0x44, emu)\n"
        "s = adafruit_sht4x.SHT4x(LockedI2C(i2cemu.MachineI2C(bus)))\n"
        "print(hex(s.serial_number))\n"
        "for m in (adafruit_sht4x.Mode.NOHEAT_MEDPRECISION, adafruit_sht4x.Mode.NOHEAT_LOWPRECISION, adafruit_sht4x.Mode.LOWHEAT_100MS):\n"
        "    s.mode = m\n"
        "    t, rh = s.measurements\n"
        "    print('%.2f %.2f' % (t, rh))\n"
        "print(' '.join(hex(c) for c in emu.commands))\n"
        "print(sht4xemu.crc8(b'\\xbe\\xef') == 0x92)\n",
        extra_paths=(app_lib,),
    )
    serial, med, low, heat, commands, crc_ok = out.strip().splitlines()
    assert serial == "0x1234abcd"
    assert med == low == "-10.25 80.50"
    assert float(heat.split()[0]) > -10.25  # the heater warms the die
    assert commands == "0x94 0x89 0xf6 0xe0 0x15"
    assert crc_ok == "True"  # the datasheet's example: 0xBEEF -> 0x92


def test_reading_too_early_is_nacked(runtime):
    # The SHT4x NACKs while measuring: a driver that does not wait gets an I/O error, not stale data.
    out = runtime.run(
        # The sensor's clock is the test's: 8 ms after the command it is still busy, at 9 ms it is done,
        # however slowly a loaded machine runs the script.
        "import i2cemu, sht4xemu\nnow = [1000]\n"
        "bus = i2cemu.Bus(); bus.attach(0x44, sht4xemu.Sht4x(clock=lambda: now[0]))\n"
        "i2c = i2cemu.MachineI2C(bus)\ni2c.writeto(0x44, b'\\xfd')\nbuf = bytearray(6)\nnow[0] += 8\n"
        "try:\n i2c.readfrom_into(0x44, buf)\nexcept OSError as e:\n print('nack', e.args[0])\n"
        "now[0] += 1\ni2c.readfrom_into(0x44, buf)\nprint(sht4xemu.crc8(buf[0:2]) == buf[2])\n"
        "try:\n i2c.readfrom_into(0x44, buf)\nexcept OSError as e:\n print('read twice', e.args[0])"
    )
    assert out.split() == ["nack", "5", "True", "read", "twice", "5"]


@pytest.mark.parametrize(
    "data, error",
    [
        (b"\x01\x00" + bytes(7), "10 bytes"),
        (b"\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00", "kind"),
        (b"\x01\x09\x00\x00\x00\x00\x00\x00\x00\x00", "quality"),
        (b"\x01\x04\x00\x01\x00\x01\x00\x00\x00\x00", "with values"),
        (b"\x01\x00\x80\x00\xff\xff\x00\x00\x00\x00", "without values"),
        (b"\x01\x00\x00\x00\x27\x11\x00\x00\x00\x00", "100"),
    ],
)
def test_reading_decode_rejects_bad_bytes(data, error):
    from cellguard import reading

    with pytest.raises(reading.ReadingError, match=error):
        reading.decode(data)


def test_reading_encoding_known_answer():
    from cellguard import reading

    r = reading.Reading(reading.OK, -10.25, 80.5, t=0x01020304)
    assert reading.encode(r).hex() == "0100fbff1f7201020304"
    back = reading.decode(bytes.fromhex("01048000ffff01020304"))
    assert (back.quality_name, back.temperature_c, back.humidity_rh, back.t) == ("absent", None, None, 0x01020304)


PROFILE_SENSOR = """
import sys, i2cemu, sht4xemu
from cellguard import board, events
if PATH == 'machine':
    import machineemu
    sys.modules['machine'] = machineemu
    conf = {'type': 'sht4x', 'bus': 1, 'sda': 2, 'scl': 3, 'address': 68}
else:
    conf = {'type': 'sht4x', 'scl': 'SCL', 'sda': 'SDA', 'address': 68}
i2cemu.default_bus().attach(0x44, sht4xemu.Sht4x(temperature_c=19.5, humidity_rh=55.0))
mon = board.Profile({'name': 't', 'sensor': conf}).sensor_monitor()
r = mon.read()
print('reading', r.quality_name, '%.1f' % r.temperature_c, mon.reason)
print('none', board.Profile({'name': 'n'}).sensor_monitor())
"""


@pytest.mark.parametrize("path", ["machine", "circuitpython"])
def test_board_profile_builds_the_sensor(runtime, path, app_lib):
    extra = (CPY_SHIM, app_lib) if path == "circuitpython" else (app_lib,)
    out = runtime.run("PATH = %r\n" % path + PROFILE_SENSOR, extra_paths=extra, timeout=60)
    assert out.strip().split("\n") == ["reading ok 19.5 None", "none None"]


def test_missing_driver_is_absent_with_a_reason(runtime):
    # No bundle on the path: the image was built without cellguard bundle.
    out = runtime.run(
        "import sys\nif sys.implementation.name == 'cpython':\n sys.modules['adafruit_sht4x'] = None  # in the venv\n"
        "import i2cemu, sht4xemu\nfrom cellguard import events, sensors\nfrom cellguard.i2cbus import LockedI2C\n"
        "bus = i2cemu.default_bus(); bus.attach(0x44, sht4xemu.Sht4x())\n"
        "mon = sensors.SensorMonitor(sensors.sht4x_opener(LockedI2C(i2cemu.MachineI2C(bus))))\n"
        "r = mon.read()\nprint(r.quality_name, r.temperature_c)\nprint(mon.reason)\nprint(events.recent()[-1])"
    )
    quality, reason, log = out.strip().split("\n")
    assert quality == "absent None"
    assert reason.startswith("driver missing: ") and "adafruit_sht4x" in reason
    assert log.startswith("sensor sht4x: absent (driver missing: ")


def test_unopenable_bus_is_absent_not_a_crash(mp):
    # The unix port's machine has no I2C: the builder's failure is a reading of quality absent.
    out = mp.run(
        "from cellguard import board\n"
        "mon = board.Profile({'name': 't', 'sensor': {'bus': 0, 'scl': 1, 'sda': 2}}).sensor_monitor()\n"
        "r = mon.read(); print(r.quality_name); print(mon.reason)"
    )
    quality, reason = out.strip().split("\n")
    assert quality == "absent" and reason.startswith("no answer: cannot open I2C bus 0")


@pytest.mark.timeout(240)
def test_release_image_carries_the_device_libraries(tmp_path, mp):
    # The signed application image (what slot a holds) mounts with the drivers inside it.
    from cgboot import image as cgimage
    from cgdev import image

    key = image.keygen(tmp_path / "dev.pem")
    img = image.release(key, "9.9.9", tmp_path / "app.img", march="x64")
    buf = img.read_bytes()
    hdr_size, img_size = cgimage.parse(buf)[:2]
    romfs = tmp_path / "app.romfs"
    romfs.write_bytes(buf[hdr_size : hdr_size + img_size])
    out = mp.run(
        "import os, sys, vfs\n"
        "vfs.mount(vfs.VfsRom(open(%r, 'rb').read()), '/app')\n"
        "print(' '.join(sorted(os.listdir('/app'))))\n"
        "print(' '.join(sorted(os.listdir('/app/adafruit_bus_device'))))\n"
        "sys.path.insert(0, '/app')\n"
        "import adafruit_sht4x\nprint(adafruit_sht4x.__version__)" % str(romfs),
        heapsize="512K",
    )
    top, busdevice, version = out.strip().split("\n")
    assert {"adafruit_sht4x.mpy", "BUNDLE.json", "cellguard"} <= set(top.split())
    assert "adafruit_hashlib" not in top  # MicroPython has hashlib built in: not bundled for it
    assert "i2c_device.mpy" in busdevice.split()
    assert version == "1.0.27"


def test_flash_sends_the_device_libraries_for_the_runtime():
    from cgdev import flash

    mp_files = flash.device_lib_files("micropython")
    assert {"lib/adafruit_sht4x.mpy", "lib/adafruit_bus_device/i2c_device.mpy", "lib/BUNDLE.json"} <= set(mp_files)
    assert not any(p.startswith("lib/adafruit_hashlib") for p in mp_files)
    cp_files = flash.device_lib_files("circuitpython")  # CircuitPython's .mpy is another format: source
    assert {"lib/adafruit_sht4x.py", "lib/adafruit_hashlib/__init__.py"} <= set(cp_files)
