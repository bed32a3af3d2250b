# A daily byte allowance kept on flash: the over-the-air update's own budget (docs/messaging.md,
# "Over-the-air updates"). Separate from the outbox's budget on purpose: an update may spend its
# bytes, never the readings'. Same rules as the outbox's: "today" is the caller's day number (the
# hub's clock), and only a day that moves forward opens a new allowance, so a reboot or a clock set
# back never grants one.
from cellguard import atomic


class DailyBudget:
    """limit(): today's allowance in bytes (read on every check: CONFIG may change it).
    today(): the day number (outbox.today)."""

    def __init__(self, path, limit, today):
        self.path = path
        self.limit = limit
        self.today = today
        try:
            fields = atomic.read_bytes(path).split()
            self.day, self.used = int(fields[0]), int(fields[1])
        except (OSError, ValueError, IndexError):
            self.day, self.used = today(), 0

    def _roll(self):
        d = self.today()
        if d > self.day:
            self.day, self.used = d, 0

    def allows(self, n):
        self._roll()
        return self.used + n <= self.limit()

    def left(self):
        self._roll()
        return max(0, self.limit() - self.used)

    def spend(self, n):
        # On flash before the bytes go: a power cut after the send cannot give them back.
        self._roll()
        self.used = max(0, self.used + n)  # a refund after midnight never makes credit
        atomic.write_atomic(self.path, b"%d %d" % (self.day, self.used))
