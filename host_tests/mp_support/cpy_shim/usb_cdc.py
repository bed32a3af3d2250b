# Test scaffolding: CircuitPython's usb_cdc. console/data are Serial objects (or None); enable()
# is a boot.py-time setting. The data port's other end is `host` (what a technician's PC sends).
class Serial:
    def __init__(self):
        self.host = bytearray()  # bytes waiting for the device
        self.sent = bytearray()  # bytes the device wrote
        self.timeout = 1
        self.write_timeout = None  # None: write waits until the host has taken it all
        self.room = None  # bytes the host takes before it stops reading (None: no limit)

    @property
    def in_waiting(self):
        return len(self.host)

    def readinto(self, buf):
        n = min(len(buf), len(self.host))
        if not n:
            return None
        buf[:n] = self.host[:n]
        self.host = self.host[n:]
        return n

    def write(self, buf):
        if self.room is not None:
            n = min(len(buf), max(0, self.room - len(self.sent)))
            if n < len(buf) and self.write_timeout is None:
                import time

                while True:  # as a real CDC whose host stopped reading: waits for ever
                    time.sleep(1)
            buf = buf[:n]
        self.sent += buf
        return len(buf)

    def deinit(self):
        pass


console = Serial()
data = None


def enable(*, console=True, data=False):
    g = globals()
    g["console"] = Serial() if console else None
    g["data"] = Serial() if data else None


def disable():
    enable(console=False, data=False)
