# Sensor readings with their faults detected: never hand on a bad value as good data.
#
# SensorMonitor wraps a driver factory (for the SHT4x: the pinned Adafruit driver on an I2C bus
# through adafruit_bus_device) and turns each measurement into a Reading with a quality flag
# (cellguard.reading). It reports every change of quality as an event ("sensor sht4x: crc") and
# keeps per-fault counters in the status section "sensor". See docs/sensors.md for the rules.
from cellguard import events, runtime
from cellguard.reading import ABSENT, BUS, CRC, JUMP, NAMES, OK, RANGE, STUCK, Reading

# What an SHT4x can measure (datasheet): -40..125 C, 0..100 %RH.
T_MIN = -40.0
T_MAX = 125.0


def sht4x_opener(i2c, address=0x44, mode=None):
    """A factory for SensorMonitor: the Adafruit SHT4x driver on `i2c` (busio.I2C or LockedI2C)."""

    def open_sht4x():
        import adafruit_sht4x  # bundled from the pinned requirements (cellguard bundle)

        sensor = adafruit_sht4x.SHT4x(i2c, address)  # probes the address, then soft-resets
        if mode is not None:
            sensor.mode = mode
        return sensor

    return open_sht4x


class SensorMonitor:
    def __init__(self, open_sensor, name="sht4x", stuck_after=6, max_step_c=5.0, max_step_rh=15.0,
                 confirm_after=3, on_event=None, clock=None):
        self._open = open_sensor
        self.name = name
        self.stuck_after = stuck_after  # this many identical readings in a row are STUCK
        self.max_step_c = max_step_c  # a larger step than these between readings is a JUMP ...
        self.max_step_rh = max_step_rh
        self.confirm_after = confirm_after  # ... until this many readings agree on the new level
        self._on_event = on_event
        self._clock = clock or runtime.time_s
        self._sensor = None
        self._quality = None
        self._last = None  # the previous measured (t, rh)
        self._same = 0
        self._baseline = None  # the last accepted (t, rh)
        self._candidate = None
        self._confirmed = 0
        self.reason = None  # why the last reading had no values, when the monitor knows
        self.counts = [0] * len(NAMES)
        events.set("sensor", "type", name)

    def read(self):
        now = self._clock()
        values, quality = self._measure()
        if values is None:
            return self._finish(Reading(quality, None, None, now))
        t, rh = values
        quality = self._judge(t, rh)
        return self._finish(Reading(quality, t, rh, now))

    def _measure(self):
        self.reason = None
        if self._sensor is None:
            try:
                self._sensor = self._open()
            except ImportError as e:
                # The driver is not in the image (cellguard bundle did not run): a fault to
                # report, not a crash, and not to be mistaken for an unplugged sensor.
                self.reason = "driver missing: %s" % (e,)
                return None, ABSENT
            except (ValueError, OSError) as e:  # busdevice's probe raises ValueError("No I2C device ...")
                self.reason = "no answer: %s" % (e,)
                return None, ABSENT
        try:
            return self._sensor.measurements, OK
        except RuntimeError:  # the Adafruit driver's "Invalid CRC calculated"
            return None, CRC
        except OSError:
            # A NACK or a timeout. Ports name it differently (ENODEV, EIO, ETIMEDOUT), so ask the
            # bus: if the sensor no longer answers its address it is absent, otherwise the
            # transaction failed. Re-opening also soft-resets it, which clears most bus hang-ups.
            self._sensor = None
            try:
                self._sensor = self._open()
            except (ImportError, ValueError, OSError) as e:
                self.reason = "no answer: %s" % (e,)
                return None, ABSENT
            return None, BUS

    def _judge(self, t, rh):
        if not (T_MIN <= t <= T_MAX) or not (0.0 <= rh <= 100.0):
            return RANGE
        same = self._last == (t, rh)
        self._last = (t, rh)
        self._same = self._same + 1 if same else 1
        if self._same >= self.stuck_after:
            return STUCK
        base = self._baseline
        if base is None or (abs(t - base[0]) <= self.max_step_c and abs(rh - base[1]) <= self.max_step_rh):
            self._baseline = (t, rh)
            self._candidate = None
            return OK
        # A jump from the baseline: suspect until confirm_after readings in a row agree on it.
        cand = self._candidate
        if cand is not None and abs(t - cand[0]) <= self.max_step_c and abs(rh - cand[1]) <= self.max_step_rh:
            self._confirmed += 1
        else:
            self._confirmed = 1
        self._candidate = (t, rh)
        if self._confirmed >= self.confirm_after:
            events.log("sensor %s: new level accepted %.2f C %.2f %%RH" % (self.name, t, rh))
            self._baseline = (t, rh)
            self._candidate = None
            return OK
        return JUMP

    def _finish(self, reading):
        q = reading.quality
        self.counts[q] += 1
        events.set("sensor", "last", reading.t)  # the status page's "last reading" time
        if q != self._quality:
            self._quality = q
            name = NAMES[q]
            why = " (%s)" % self.reason if self.reason else ""
            events.log("sensor %s: %s%s" % (self.name, name, why))
            events.set("sensor", "quality", name)
            events.set("sensor", "reason", self.reason)
            if self._on_event is not None:
                self._on_event(self.name, name)
        if q != OK:
            events.set("sensor", NAMES[q], self.counts[q])
        return reading
