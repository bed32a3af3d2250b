# What is fitted to a board besides its modem: the sensor and the tamper switch, built from the
# board profile's "sensor" and "tamper" sections (boards/README.md, docs/sensors.md). Imported by
# cellguard.board only for a profile that has them; nothing here opens hardware at import time, and
# the I2C bus is only opened at the sensor's first reading.
from cellguard import runtime


class FittedError(ValueError):
    """A sensor or tamper section this firmware cannot build."""


def sensor_monitor(c, on_event=None):
    """A SensorMonitor for section `c`. A bus that cannot be opened (wrong pins, no such peripheral)
    is then a reading of quality `absent` with the reason, never an exception out of the app loop."""
    kind = c.get("type", "sht4x")
    if kind != "sht4x":
        raise FittedError("sensor type %r is not supported (only sht4x)" % kind)
    from cellguard import sensors

    address = c.get("address", 0x44)
    state = {}

    def open_sensor():
        i2c = state.get("i2c")
        if i2c is None:
            i2c = state["i2c"] = _open_i2c(c)
        return sensors.sht4x_opener(i2c, address)()

    return sensors.SensorMonitor(open_sensor, name=kind, on_event=on_event)


def tamper_monitor(c, on_tamper=()):
    if c.get("pin") is None:
        raise FittedError("the tamper section names no pin")
    from cellguard import tamper

    open_level = 1 if c.get("open_level", 1) else 0
    return tamper.TamperMonitor(
        _input_pin(c["pin"], open_level, c.get("pull", "up")), open_level=open_level,
        source=c.get("source", "enclosure"), wipe_keys=bool(c.get("wipe_keys", False)), on_tamper=on_tamper,
    )


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
