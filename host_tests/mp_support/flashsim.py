# Simulated NOR flash for littlefs (vfs.VfsLfs2) that can lose power: test scaffolding.
#
# Runs on the MicroPython unix port (and CPython). It implements the extended block protocol
# (readblocks/writeblocks with offset, ioctl erase), with flash semantics: erase sets a block to
# 0xFF and a program can only clear bits (new = old AND data), so a driver that programs without
# erasing is caught. Power can be cut before the N-th program or erase; with `torn=True` the
# interrupted program leaves only the first half of its bytes written. After the cut every
# operation raises PowerCut (a BaseException, so firmware `except Exception` handlers cannot swallow
# it, nor can a `with open(...)` whose close() fails after the cut). The test then calls reboot(),
# which returns a fresh device over the same bytes, and remounts, as a device would after power
# returns. The old object is retired: it goes on working on a private copy of the bytes, so a stale
# file object's finaliser can never write into the "rebooted" flash (nor print a traceback).
#
# Flash that decays between power cuts: flip() changes stored bits (a retention fault), weak cells
# read back differently on successive reads (a half-programmed cell: each read of it returns the
# stored bit or its complement, from a fixed pseudo-random sequence), and a bad spot makes every read
# that covers it fail with EIO (for a number of reads, or for ever). They survive reboot(): they are
# the flash's, not the power's.


class PowerCut(BaseException):
    pass


class FlashSim:
    def __init__(self, block_count=64, block_size=512, image=None):
        self.block_size = block_size
        self.block_count = block_count
        self.data = image if image is not None else bytearray(b"\xff" * (block_count * block_size))
        self.ops = 0  # programs + erases since creation or the last arm()
        self.cut_at = -1  # the op index that loses power; -1 = never
        self.torn = False
        self.dead = False
        self.retired = False
        self.weak = {}  # byte offset -> bit mask that reads back at random
        self.bad = {}  # byte offset -> reads covering it left that fail with EIO (-1: every one)
        self._noise = 0x2545F491  # the weak cells' pseudo-random sequence (xorshift32)

    # -- power ------------------------------------------------------------------------------
    def arm(self, cut_at, torn=False):
        """Lose power just before program/erase number `cut_at` (0-based, counted from now)."""
        self.ops = 0
        self.cut_at = cut_at
        self.torn = torn
        self.dead = False

    def reboot(self):
        """Power returns: a new device over the same bytes; this one is retired."""
        fresh = FlashSim(self.block_count, self.block_size, self.data)
        fresh.weak, fresh.bad, fresh._noise = self.weak, self.bad, self._noise
        # The copy is made now because a finaliser runs with the heap locked and cannot allocate.
        self.data = bytearray(self.data)
        self.dead = self.retired = True
        return fresh

    def _mutate(self):
        if self.retired:  # a finaliser of the old mount: it writes to its own copy
            return True
        if self.dead:
            raise PowerCut()
        if self.ops == self.cut_at:
            self.dead = True
            return False
        self.ops += 1
        return True

    # -- decay ------------------------------------------------------------------------------
    def flip(self, offset, mask=1):
        """A retention fault: the stored bits in `mask` of byte `offset` change."""
        self.data[offset] ^= mask

    def _coin(self):
        x = self._noise
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self._noise = x
        return x & 1

    # -- block protocol ---------------------------------------------------------------------
    def readblocks(self, block, buf, offset=0):
        if self.dead and not self.retired:
            raise PowerCut()
        start = block * self.block_size + offset
        if self.bad and not self.retired:
            for at in self.bad:
                left = self.bad[at]
                if left and start <= at < start + len(buf):
                    self.bad[at] = left - 1 if left > 0 else left
                    return -5  # EIO: littlefs hands it on, the read raises OSError
        try:
            buf[:] = self.data[start : start + len(buf)]
        except MemoryError:  # called from a finaliser with the heap locked: copy without allocating
            d = self.data
            for i in range(len(buf)):
                buf[i] = d[start + i]
        if self.weak and not self.retired:
            for at in self.weak:
                if start <= at < start + len(buf) and self._coin():
                    buf[at - start] ^= self.weak[at]
        return 0

    def writeblocks(self, block, buf, offset=None):
        if offset is None:  # simple protocol: erase then program whole blocks
            for i in range(len(buf) // self.block_size):
                self.ioctl(6, block + i)
            offset = 0
        start = block * self.block_size + offset
        n = len(buf)
        if not self._mutate():
            if self.torn:
                n //= 2
                d = self.data
                for i in range(n):
                    d[start + i] &= buf[i]
            raise PowerCut()
        d = self.data
        for i in range(n):
            d[start + i] &= buf[i]
        return 0

    def ioctl(self, op, arg):
        if op == 4:
            return self.block_count
        if op == 5:
            return self.block_size
        if op == 6:
            if not self._mutate():
                if self.torn:  # a torn erase: half the block erased
                    start = arg * self.block_size
                    self._erase(start, self.block_size // 2)
                raise PowerCut()
            self._erase(arg * self.block_size, self.block_size)
            return 0
        return 0

    def _erase(self, start, n):
        d = self.data
        for i in range(start, start + n):  # no allocation: finalisers run with the heap locked
            d[i] = 0xFF

    # -- persistence (the virtual board keeps its flash in a file) ----------------------------
    def save(self, path):
        with open(path, "wb") as f:
            f.write(self.data)

    @classmethod
    def load(cls, path, block_size=512):
        with open(path, "rb") as f:
            data = bytearray(f.read())
        return cls(len(data) // block_size, block_size, data)
