# The board profile on the device: boards/<name>/board.json, copied to /board.json by tools/flash.py.
#
# It names the runtime, the modem's UART and pins, the dialect, power/reset pins, console and slot
# size, and the optional sensor (I2C bus, pins, address, type) and tamper switch (pin, open level,
# whether an opening wipes the keys); a profile without them has none fitted. This module reads it
# and builds the hardware objects the drivers are handed (a UART stream, the reset and power-key
# pulses, the sensor and tamper monitors); nothing here imports machine or board at import time,
# and the I2C bus is only opened at the sensor's first reading.
import json

from cellguard import runtime

PROFILE_FILE = "board.json"


class BoardError(Exception):
    """The profile is missing or says something this device cannot do."""


class Profile:
    def __init__(self, data):
        self.data = data
        self.name = data.get("name", "unknown")
        self.dialect = data.get("modem", {}).get("dialect")
        self.uart_conf = data.get("uart", {})
        self.power_conf = data.get("power", {})
        self.slot_size = data.get("slot_size")
        self.runtime = data.get("runtime", {})
        self.sensor_conf = data.get("sensor")  # None or absent: no sensor fitted
        self.tamper_conf = data.get("tamper")  # None or absent: no tamper switch fitted

    def uart_port(self):
        port = self.uart_conf.get("id")
        if isinstance(port, str) and port.startswith("env:"):
            import os

            port = os.getenv(port[4:])
            if not port:
                raise BoardError("no modem attached: $%s is not set" % self.uart_conf["id"][4:])
        return port

    def open_uart(self):
        """The modem's UART as a runtime byte stream (write/readinto/wait_readable/close)."""
        c = self.uart_conf
        return runtime.open_uart(
            self.uart_port(), baudrate=c.get("baud", 115200), tx=c.get("tx"), rx=c.get("rx"),
            rxbuf=c.get("rxbuf", 1024)
        )

    def _pulse(self, pin_name):
        # A callable that pulses a pin (the modem's PWRKEY or RESET), or None if the board has none.
        pin = self.power_conf.get(pin_name)
        if pin is None:
            return None
        active_low = self.power_conf.get("active_low", True)
        ms = self.power_conf.get(pin_name + "_ms", self.power_conf.get("pulse_ms", 500))
        return _make_pulse(pin, active_low, ms)

    def reset_modem(self):
        return self._pulse("reset")

    def power_key(self):
        return self._pulse("pwrkey")

    def sensor_monitor(self, on_event=None):
        """A cellguard.sensors.SensorMonitor for the profile's sensor, or None if none is fitted."""
        if not self.sensor_conf:
            return None
        from cellguard import fitted  # only a board with a sensor pays for the builders

        return fitted.sensor_monitor(self.sensor_conf, on_event)

    def tamper_monitor(self, on_tamper=()):
        """A cellguard.tamper.TamperMonitor on the profile's switch, or None if none is fitted."""
        if not self.tamper_conf:
            return None
        from cellguard import fitted

        return fitted.tamper_monitor(self.tamper_conf, on_tamper)


def _make_pulse(pin, active_low, ms):
    state = {}

    def pulse():
        out = state.get("pin")
        if out is None:
            out = state["pin"] = _output_pin(pin)
        out.value(0 if active_low else 1)
        runtime.sleep_ms(ms)
        out.value(1 if active_low else 0)

    return pulse


def _output_pin(pin):
    if runtime.NAME == runtime.CIRCUITPYTHON:
        import board
        import digitalio

        io = digitalio.DigitalInOut(getattr(board, pin))
        io.direction = digitalio.Direction.OUTPUT

        class _Pin:
            def value(self, v):
                io.value = bool(v)

        return _Pin()
    import machine

    return machine.Pin(pin, machine.Pin.OUT)


def load(path=None):
    """Read the profile flashed with the firmware (fs_root()/board.json)."""
    if path is None:
        path = runtime.path_join(runtime.fs_root(), PROFILE_FILE)
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError:
        raise BoardError("no board profile at %s: flash with tools/flash.py --board <name>" % path)
    except ValueError:
        raise BoardError("the board profile at %s is not valid JSON" % path)
    if not isinstance(data, dict) or "name" not in data:
        raise BoardError("the board profile at %s has no name" % path)
    return Profile(data)
