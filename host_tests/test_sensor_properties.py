"""Properties, under CPython with hypothesis: the reading encoding round-trips, the emulator's CRC is
the driver's, and no fault sequence ever yields an `ok` reading that is not the sensor's truth."""

import adafruit_sht4x
import i2cemu
import sht4xemu
from cellguard import reading, sensors
from cellguard.i2cbus import LockedI2C
from hypothesis import given, settings
from hypothesis import strategies as st


@given(
    quality=st.sampled_from(range(len(reading.NAMES))),
    t=st.floats(-40, 125),
    rh=st.floats(0, 100),
    ts=st.integers(0, 2**32 - 1),
)
def test_encoding_round_trips(quality, t, rh, ts):
    r = reading.Reading(quality, t, rh, ts)
    back = reading.decode(reading.encode(r))
    assert (back.quality, back.t, back.kind) == (quality, ts, reading.KIND_SHT4X)
    if quality in (reading.ABSENT, reading.CRC, reading.BUS):
        assert back.temperature_c is None and back.humidity_rh is None
    else:
        assert abs(back.temperature_c - t) <= 0.005 + 1e-9
        assert abs(back.humidity_rh - rh) <= 0.005 + 1e-9


@given(st.binary(min_size=0, max_size=12))
def test_decode_never_raises_anything_but_reading_error(data):
    try:
        reading.decode(data)
    except reading.ReadingError:
        pass


@given(st.binary(min_size=2, max_size=2))
def test_emulator_crc_is_the_drivers(data):
    # Two independent implementations of the datasheet's CRC-8 (poly 0x31, init 0xFF) agree.
    assert sht4xemu.crc8(data) == adafruit_sht4x.SHT4x._crc8(data)


STEPS = st.lists(
    st.sampled_from(["read", "crc", "nack", "unplug", "replug", "stuck", "unstuck", "warm", "cool"]),
    min_size=1,
    max_size=25,
)


@settings(max_examples=40, deadline=None)
@given(STEPS)
def test_an_ok_reading_is_always_the_truth(steps):
    bus = i2cemu.Bus()
    emu = sht4xemu.Sht4x(temperature_c=20.0, humidity_rh=50.0)
    bus.attach(0x44, emu)
    mon = sensors.SensorMonitor(
        sensors.sht4x_opener(LockedI2C(i2cemu.MachineI2C(bus)), mode=adafruit_sht4x.Mode.NOHEAT_LOWPRECISION)
    )
    frozen_ok = 0
    for step in steps:
        if step == "crc":
            emu.corrupt_next += 1
        elif step == "nack":
            emu.nack_next += 1
        elif step == "unplug":
            bus.detach(0x44)
        elif step == "replug":
            bus.attach(0x44, emu)
        elif step in ("stuck", "unstuck"):
            emu.stuck = step == "stuck"
        elif step in ("warm", "cool"):
            emu.temperature_c += 12.0 if step == "warm" else -12.0
        corrupt_before = emu.corrupt_next
        present = 0x44 in bus.devices
        r = mon.read()
        if r.good:
            assert present and emu.corrupt_next == corrupt_before  # no corrupted answer became ok
        if r.good and not emu.stuck:
            assert abs(r.temperature_c - emu.temperature_c) < 0.1
            assert abs(r.humidity_rh - emu.humidity_rh) < 0.1
        # A frozen sensor cannot be told from a steady one at once: at most stuck_after - 1 of its
        # identical readings pass as ok before it is flagged.
        frozen_ok = frozen_ok + 1 if (r.good and emu.stuck) else 0
        assert frozen_ok < mon.stuck_after
        if not present:
            assert r.quality == reading.ABSENT
        if r.quality in (reading.ABSENT, reading.CRC, reading.BUS):
            assert r.temperature_c is None
