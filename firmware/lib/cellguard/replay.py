# Replay window (RFC 4303 3.4.3, RFC 6347 4.1.2.6): the highest sequence accepted and a bitmap of
# the `size` below it. check() decides, update() records; callers update only after the tag has
# verified, so a forged datagram can never move the window.

NEW = 0
DUPLICATE = 1
TOO_OLD = 2


class ReplayWindow:
    def __init__(self, size=32):
        self.size = size
        self.highest = -1
        self.bits = 0  # bit i set: highest - 1 - i was accepted

    def check(self, seq):
        if seq > self.highest:
            return NEW
        if seq == self.highest:
            return DUPLICATE
        d = self.highest - seq - 1
        if d >= self.size:
            return TOO_OLD
        return DUPLICATE if (self.bits >> d) & 1 else NEW

    def update(self, seq):
        if seq > self.highest:
            shift = seq - self.highest
            if self.highest >= 0:
                self.bits = ((self.bits << 1) | 1) << (shift - 1) if shift <= self.size else 0
            self.bits &= (1 << self.size) - 1
            self.highest = seq
        elif seq < self.highest:
            d = self.highest - seq - 1
            if d < self.size:
                self.bits |= 1 << d

    def to_bytes(self):
        return b"%d %d" % (self.highest, self.bits)

    @classmethod
    def from_bytes(cls, data, size=32):
        w = cls(size)
        h, b = data.split()
        w.highest = int(h)
        w.bits = int(b) & ((1 << size) - 1)
        return w
