"""Test scaffolding: machine.I2C and machine.Pin on the emulated I2C bus (i2cemu) and GPIO lines
(gpioemu), with MicroPython's signatures. A test puts it in sys.modules["machine"] so the board
profile's builders (cellguard.board) open "hardware" on the unix port exactly as on a board."""
import gpioemu
import i2cemu


class I2C(i2cemu.MachineI2C):
    def __init__(self, id, *, scl=None, sda=None, freq=400000, timeout=50000):
        i2cemu.MachineI2C.__init__(self, i2cemu.default_bus())
        self.id = id
        self.freq = freq


class Pin(gpioemu.Pin):
    def __init__(self, id, mode=gpioemu.Pin.IN, pull=None):
        gpioemu.Pin.__init__(self, id, mode, pull)
