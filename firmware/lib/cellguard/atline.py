# Line assembly and field helpers for the AT engine (cellguard.at re-exports all of them): a
# bounded, preallocated line buffer fed from any byte stream, and allocation-free field parsing on
# it. A module of its own so that each of the two compiles in a small heap (MicroPython compiles a
# whole module's parse tree at once).
try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


_CR = const(13)
_LF = const(10)
_SPACE = const(32)
_COMMA = const(44)
_ZERO = const(48)
_NINE = const(57)


def _text(b):
    # Modem output may hold any byte (noise): never let decoding raise.
    if isinstance(b, (bytes, bytearray)):
        try:
            return bytes(b).decode()
        except UnicodeError:
            return "".join(chr(c) if 32 <= c < 127 else "?" for c in b)
    return str(b)


# ---- line assembly ---------------------------------------------------------------------------
class LineReader:
    """Splits a byte stream into lines in one preallocated buffer; never raises on any input.

    on_line(buf, n) gets each non-blank line (buf[:n], no terminator); the buffer is reused, so a
    consumer that keeps a line copies it. \\r, \\n and \\r\\n all end a line, and blank or
    all-space lines are skipped, so the result does not depend on how the bytes were chopped.
    A line longer than the buffer is discarded up to its end and counted in .overflows.

    Two modes the engine arms for one command:
    - prompt: a byte value ('>' or '@'); seen at the start of a line it calls on_prompt().
    - raw_prefix: e.g. b"+CARECV: " - a line starting with it carries "<len>," then <len> raw
      bytes that may contain anything, CR and LF included; they become part of the line.
    """

    def __init__(self, on_line, max_line=256, on_prompt=None):
        self.buf = bytearray(max_line)
        self.max_line = max_line
        self.n = 0
        self.overflows = 0
        self.prompt = 0
        self.raw_prefix = None
        self._on_line = on_line
        self._on_prompt = on_prompt
        self._discarding = False
        self._raw_left = 0
        self._raw_overflow = False

    def reset(self):
        self.n = 0
        self._discarding = False
        self._raw_left = 0
        self._raw_overflow = False

    def feed(self, data, start=0, end=-1):
        if end < 0:
            end = len(data)
        buf = self.buf
        limit = self.max_line
        i = start
        while i < end:
            c = data[i]
            i += 1
            if self._raw_left:
                if self.n < limit:
                    buf[self.n] = c
                    self.n += 1
                else:
                    self._raw_overflow = True
                self._raw_left -= 1
                if not self._raw_left:
                    if self._raw_overflow:
                        self.overflows += 1
                    else:
                        self._on_line(buf, self.n)
                    self.n = 0
                    self._raw_overflow = False
                continue
            if c == _CR or c == _LF:
                if self._discarding:
                    self._discarding = False
                elif self.n:
                    n = self.n
                    self.n = 0
                    if not self._blank(n):
                        self._on_line(buf, n)
                continue
            if self._discarding:
                continue
            if self.n == 0 and c == self.prompt:
                self.prompt = 0
                if self._on_prompt is not None:
                    self._on_prompt()
                continue
            if self.n >= limit:
                self.overflows += 1
                self._discarding = True
                self.n = 0
                continue
            buf[self.n] = c
            self.n += 1
            if c == _COMMA and self.raw_prefix is not None:
                self._check_raw()

    def _blank(self, n):
        buf = self.buf
        for k in range(n):
            if buf[k] != _SPACE:
                return False
        return True

    def _check_raw(self):
        # "<raw_prefix><digits>," just completed: the next <digits> bytes are payload.
        p = self.raw_prefix
        start = len(p)
        comma = self.n - 1
        if comma <= start or not self.buf.startswith(p):
            return
        length = 0
        buf = self.buf
        for k in range(start, comma):
            d = buf[k]
            if d < _ZERO or d > _NINE:
                return
            length = length * 10 + d - _ZERO
        if buf.find(b",", start, comma) >= 0:
            return
        self._raw_left = length
        if not length:
            self._on_line(buf, self.n)
            self.n = 0


# ---- small allocation-free field helpers (URC handlers use these on the shared buffer) ----------
def field_start(buf, n, index):
    """Offset of comma-separated field `index` after the "<prefix>: " part, or -1."""
    pos = buf.find(b":", 0, n)
    pos = 0 if pos < 0 else pos + 1
    while pos < n and buf[pos] == _SPACE:
        pos += 1
    while index:
        pos = buf.find(b",", pos, n)
        if pos < 0:
            return -1
        pos += 1
        index -= 1
    return pos


def field_int(buf, n, index, default=-1):
    """Integer value of field `index` (see field_start), or default if absent or not a number."""
    pos = field_start(buf, n, index)
    if pos < 0 or pos >= n:
        return default
    if buf[pos] == 34:  # a quoted number: "0"
        pos += 1
    value = 0
    digits = 0
    while pos < n:
        d = buf[pos]
        if d < _ZERO or d > _NINE:
            break
        value = value * 10 + d - _ZERO
        digits += 1
        pos += 1
    return value if digits else default


def field_count(buf, n):
    """Number of comma-separated fields after the ': ' (commas inside quotes not counted)."""
    pos = field_start(buf, n, 0)
    if pos < 0 or pos >= n:
        return 0
    count = 1
    quoted = False
    while pos < n:
        c = buf[pos]
        if c == 34:
            quoted = not quoted
        elif c == _COMMA and not quoted:
            count += 1
        pos += 1
    return count


def fields(line):
    """All fields of a response line as a list of str, quotes removed (for command replies)."""
    text = _text(line)
    colon = text.find(":")
    if colon >= 0:
        text = text[colon + 1 :]
    out = []
    cur = ""
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out
