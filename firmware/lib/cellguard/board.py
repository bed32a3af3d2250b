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
        """A cellguard.sensors.SensorMonitor for the profile's sensor, or None if none is fitted.

        The bus is opened at the first reading, inside the monitor: a bus that cannot be opened
        (wrong pins, no such peripheral) is then a reading of quality `absent` with the reason,
        never an exception out of the application loop.
        """
        c = self.sensor_conf
        if not c:
            return None
        kind = c.get("type", "sht4x")
        if kind != "sht4x":
            raise BoardError("sensor type %r is not supported (only sht4x)" % kind)
        from cellguard import sensors

        address = c.get("address", 0x44)
        state = {}

        def open_sensor():
            i2c = state.get("i2c")
            if i2c is None:
                i2c = state["i2c"] = _open_i2c(c)
            return sensors.sht4x_opener(i2c, address)()

        return sensors.SensorMonitor(open_sensor, name=kind, on_event=on_event)

    def tamper_monitor(self, on_tamper=()):
        """A cellguard.tamper.TamperMonitor on the profile's switch, or None if none is fitted."""
        c = self.tamper_conf
        if not c:
            return None
        if c.get("pin") is None:
            raise BoardError("the tamper section names no pin")
        from cellguard import tamper

        open_level = 1 if c.get("open_level", 1) else 0
        return tamper.TamperMonitor(
            _input_pin(c["pin"], open_level, c.get("pull", "up")), open_level=open_level,
            source=c.get("source", "enclosure"), wipe_keys=bool(c.get("wipe_keys", False)), on_tamper=on_tamper,
        )


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


def _open_i2c(c):
    # The bus adafruit_bus_device expects: busio.I2C as it is, machine.I2C through LockedI2C. Any
    # failure becomes OSError, which SensorMonitor reports as `absent` with this message.
    try:
        if runtime.NAME == runtime.CIRCUITPYTHON:
            import board
            import busio

            return busio.I2C(getattr(board, c["scl"]), getattr(board, c["sda"]), frequency=c.get("freq", 100000))
        import machine

        from cellguard.i2cbus import LockedI2C

        i2c = machine.I2C(c.get("bus", 0), scl=machine.Pin(c["scl"]), sda=machine.Pin(c["sda"]),
                          freq=c.get("freq", 100000))
        return LockedI2C(i2c)
    except (ImportError, AttributeError, KeyError, TypeError, ValueError) as e:
        raise OSError("cannot open I2C bus %r: %r" % (c.get("bus", c.get("scl")), e))


def _input_pin(pin, open_level, pull):
    if runtime.NAME == runtime.CIRCUITPYTHON:
        # No pin interrupts on CircuitPython: keypad scans the pin in the background and queues
        # edges, so an opening shorter than the poll interval is still seen (docs/runtimes.md).
        import board
        import keypad

        from cellguard import tamper

        # keypad's internal pull opposes value_when_pressed: with a pull-up, "pressed" is level 0.
        pressed = 0 if pull == "up" else 1 if pull == "down" else open_level
        keys = keypad.Keys((getattr(board, pin),), value_when_pressed=bool(pressed), pull=pull is not None)
        return tamper.KeysInput(keys, open_level=open_level, pressed_level=pressed)
    import machine

    pulls = {"up": machine.Pin.PULL_UP, "down": getattr(machine.Pin, "PULL_DOWN", None), None: None}
    return machine.Pin(pin, machine.Pin.IN, pulls.get(pull))


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
