# Sequence numbers that never repeat, across reboots and power cuts (RFC 8613 appendix B.1.1).
#
# The file holds the reservation R: every number handed out so far is below R. Before handing out
# n >= R the counter writes R = n + step with an atomic replace, so a power cut at any moment can
# skip at most `step` numbers and never repeat one. After a reboot counting resumes at R.
from cellguard import atomic
from cellguard.wire import MAX_SEQ

STEP = 16


class SequenceError(Exception):
    pass


class StateCorrupt(SequenceError):
    """The reservation file is missing or unreadable: sealing would risk a repeated nonce."""


class SequenceExhausted(SequenceError):
    """Every sequence number of this key is used: the key must be rotated."""


class SequenceCounter:
    def __init__(self, path, step=STEP, limit=MAX_SEQ):
        self.path = path
        self.step = step
        self.limit = limit
        try:
            text = atomic.read_bytes(path)
            reserved = int(text)
        except (OSError, ValueError):
            raise StateCorrupt("sequence reservation unreadable: " + path)
        if reserved < 0:
            raise StateCorrupt("negative reservation")
        self._reserved = reserved
        self._next = reserved

    def peek(self):
        return self._next

    def next(self):
        n = self._next
        if n > self.limit:
            raise SequenceExhausted("sequence space used up")
        if n >= self._reserved:
            r = n + self.step
            atomic.write_atomic(self.path, b"%d" % r)  # persisted before n is used
            self._reserved = r
        self._next = n + 1
        return n
