# machine.I2C with the interface adafruit_bus_device expects (CircuitPython's busio.I2C):
# try_lock/unlock, writeto/readfrom_into with start/end, writeto_then_readfrom, scan.
#
# On CircuitPython a busio.I2C is handed to the drivers as it is; on MicroPython the board wraps its
# machine.I2C (or SoftI2C) in LockedI2C. The lock is cooperative, as busio's is: drivers sharing a
# bus take it for the length of one transaction (I2CDevice's `with`).


class LockedI2C:
    def __init__(self, i2c):
        self._i2c = i2c
        self._locked = False

    def try_lock(self):
        if self._locked:
            return False
        self._locked = True
        return True

    def unlock(self):
        self._locked = False

    def scan(self):
        return self._i2c.scan()

    def writeto(self, address, buffer, *, start=0, end=None):
        # memoryview slices: no copy of the caller's buffer (what start/end are for).
        self._i2c.writeto(address, memoryview(buffer)[start:end])

    def readfrom_into(self, address, buffer, *, start=0, end=None):
        self._i2c.readfrom_into(address, memoryview(buffer)[start:end])

    def writeto_then_readfrom(
        self, address, out_buffer, in_buffer, *, out_start=0, out_end=None, in_start=0, in_end=None
    ):
        # stop=False: a repeated start between the write and the read, as busio does.
        self._i2c.writeto(address, memoryview(out_buffer)[out_start:out_end], False)
        self._i2c.readfrom_into(address, memoryview(in_buffer)[in_start:in_end])

    def deinit(self):
        pass
