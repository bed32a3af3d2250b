"""An emulated I2C bus for tests, on the MicroPython unix port and CPython.

Devices attach at an address and implement i2c_write(data) and i2c_read(n) -> bytes; either may raise
OSError(EIO) to NACK. An address with no device NACKs with OSError(ENODEV), as real ports do.
`MachineI2C` gives the bus MicroPython's machine.I2C interface (which the unix port lacks); the
CircuitPython shim's busio.I2C uses the same bus, so one emulated sensor serves both runtimes.
"""

ENODEV = 19
EIO = 5


class Bus:
    def __init__(self):
        self.devices = {}
        self.transactions = 0

    def attach(self, address, device):
        self.devices[address] = device

    def detach(self, address):
        self.devices.pop(address, None)

    def _device(self, address):
        self.transactions += 1
        dev = self.devices.get(address)
        if dev is None:
            raise OSError(ENODEV)
        return dev

    def write(self, address, data):
        self._device(address).i2c_write(bytes(data))

    def read_into(self, address, buf):
        data = self._device(address).i2c_read(len(buf))
        for i in range(len(buf)):
            buf[i] = data[i]

    def scan(self):
        return sorted(self.devices)


_default = None


def default_bus():
    """The process-wide bus that board.SCL/board.SDA (shim) and MachineI2C() use by default."""
    global _default
    if _default is None:
        _default = Bus()
    return _default


class MachineI2C:
    """machine.I2C's calls (writeto, readfrom_into, readfrom, scan) on an emulated bus."""

    def __init__(self, bus=None):
        self._bus = bus or default_bus()

    def scan(self):
        return self._bus.scan()

    def writeto(self, addr, buf, stop=True):
        self._bus.write(addr, buf)
        return len(buf)  # machine.I2C returns the number of ACKs

    def readfrom_into(self, addr, buf, stop=True):
        self._bus.read_into(addr, buf)

    def readfrom(self, addr, nbytes, stop=True):
        buf = bytearray(nbytes)
        self._bus.read_into(addr, buf)
        return bytes(buf)
