# One sensor reading and its 10-byte encoding for the telemetry payload.
#
# Every reading carries a quality flag: OK readings are good data; STUCK, JUMP and RANGE carry the
# values that were measured but must not be used as good data; ABSENT, CRC and BUS carry no values.
# Encoding (big-endian, 10 bytes): kind u8, quality u8, temperature i16 (0.01 C),
# humidity u16 (0.01 %RH), time u32 (seconds, runtime.time_s()). A missing value is -32768 / 0xFFFF.
# The messaging layer wraps this payload; it does not interpret it. See docs/sensors.md.
import struct

OK = 0
STUCK = 1  # the same raw values too many times in a row: a frozen or replayed sensor
JUMP = 2  # a step no real environment makes between two readings (until it is confirmed)
RANGE = 3  # outside what the sensor can measure
ABSENT = 4  # the sensor does not answer at its address
CRC = 5  # the sensor answered but a CRC-8 check failed
BUS = 6  # the sensor is there but the transaction failed

NAMES = ("ok", "stuck", "jump", "range", "absent", "crc", "bus")
_NO_VALUES = (ABSENT, CRC, BUS)

KIND_SHT4X = 1  # temperature + relative humidity
_FMT = ">BBhHI"
SIZE = 10
_NO_T = -32768
_NO_RH = 0xFFFF


class ReadingError(ValueError):
    """Bytes that are not a valid encoded reading."""


class Reading:
    def __init__(self, quality, temperature_c=None, humidity_rh=None, t=0, kind=KIND_SHT4X):
        self.quality = quality
        self.temperature_c = temperature_c
        self.humidity_rh = humidity_rh
        self.t = t
        self.kind = kind

    @property
    def good(self):
        return self.quality == OK

    @property
    def quality_name(self):
        return NAMES[self.quality]

    def __repr__(self):
        return "Reading(%s, %r, %r, t=%d)" % (NAMES[self.quality], self.temperature_c, self.humidity_rh, self.t)


def encode(reading):
    if reading.quality in _NO_VALUES or reading.temperature_c is None:
        t, rh = _NO_T, _NO_RH
    else:
        t = max(-32767, min(32767, int(round(reading.temperature_c * 100))))
        rh = max(0, min(10000, int(round(reading.humidity_rh * 100))))
    return struct.pack(_FMT, reading.kind, reading.quality, t, rh, reading.t & 0xFFFFFFFF)


def decode(data):
    if len(data) != SIZE:
        raise ReadingError("a reading is %d bytes, got %d" % (SIZE, len(data)))
    kind, quality, t, rh, ts = struct.unpack(_FMT, data)
    if kind != KIND_SHT4X:
        raise ReadingError("unknown reading kind %d" % kind)
    if quality >= len(NAMES):
        raise ReadingError("unknown quality %d" % quality)
    missing = t == _NO_T and rh == _NO_RH
    if (quality in _NO_VALUES) != missing:
        raise ReadingError("quality %s with%s values" % (NAMES[quality], "out" if missing else ""))
    if missing:
        return Reading(quality, None, None, ts, kind)
    if rh > 10000:
        raise ReadingError("humidity above 100 %RH")
    return Reading(quality, t / 100, rh / 100, ts, kind)
