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
_QUOTE = const(34)


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

    Two modes the engine arms for one command (and disarms after it):
    - prompt: a byte value ('>' or '@'); seen at the start of a line it calls on_prompt(). None
      (not 0) means no prompt is armed: a NUL byte is data like any other, never a prompt.
    - raw_prefix: e.g. b"+CARECV: " - a line starting with it carries "<len>," then <len> raw
      bytes that may contain anything, CR and LF included; they become part of the line.
      raw_field > 0 says the length is that field and the bytes follow it in quotes, the rest of
      the line after them read as usual (u-blox: +USORF: <s>,"<ip>",<port>,<len>,"<bytes>").
    """

    def __init__(self, on_line, max_line=256, on_prompt=None):
        self.buf = bytearray(max_line)
        self.max_line = max_line
        self.n = 0
        self.overflows = 0
        self.prompt = None
        self.raw_prefix = None
        self.raw_field = 0
        self._on_line = on_line
        self._on_prompt = on_prompt
        self._discarding = False
        self._raw_left = 0
        self._raw_overflow = False
        self._raw_quote = -1  # quoted raw bytes: their length, until the opening quote arrives
        self._raw_ends_line = True

    def reset(self):
        """Forget the line being assembled (a command that timed out leaves one behind)."""
        self.n = 0
        self._discarding = False
        self._raw_left = 0
        self._raw_overflow = False
        self._raw_quote = -1

    def pending(self):
        """True while part of a line has arrived and its end has not."""
        return self.n > 0 or self._raw_left > 0 or self._discarding

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
                if self.n < limit and not self._discarding:
                    buf[self.n] = c
                    self.n += 1
                else:
                    self._raw_overflow = True
                self._raw_left -= 1
                if not self._raw_left:
                    if self._raw_overflow:
                        if not self._discarding:  # (a line already discarded is counted)
                            self.overflows += 1
                        self._raw_overflow = False
                        self.n = 0
                        self._discarding = not self._raw_ends_line  # and the rest of its line
                    elif self._raw_ends_line:
                        self._on_line(buf, self.n)
                        self.n = 0
                continue
            if self._raw_quote >= 0:
                # After "<len>," of a quoted payload: its bytes start after this quote.
                if c == _QUOTE:
                    self._raw_left = self._raw_quote
                    self._raw_ends_line = False
                self._raw_quote = -1
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
                self.prompt = None
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
        # "<raw_prefix>[<fields>,]<digits>," just completed: the next <digits> bytes are payload
        # (after an opening quote when raw_field > 0).
        p = self.raw_prefix
        start = len(p)
        comma = self.n - 1
        if comma <= start or not self.buf.startswith(p):
            return
        buf = self.buf
        want = self.raw_field
        quoted = False
        for k in range(start, comma):  # find the start of field `want`: commas outside quotes
            d = buf[k]
            if d == _QUOTE:
                quoted = not quoted
            elif d == _COMMA and not quoted:
                want -= 1
                if want < 0:
                    return
                start = k + 1
        if want or quoted or comma <= start:
            return
        length = 0
        for k in range(start, comma):
            d = buf[k]
            if d < _ZERO or d > _NINE:
                return
            length = length * 10 + d - _ZERO
        if self.raw_field:
            self._raw_quote = length
            return
        self._raw_ends_line = True
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
