"""The AT engine (cellguard.at) fed from an in-memory stream: line assembly under any chopping
(hypothesis, CPython), routing of URCs and replies, typed errors, prompts, raw payloads, timeouts.
The same engine script also runs on the MicroPython unix port."""

import pytest
from atstream import ScriptedStream
from cellguard import at
from hypothesis import given, settings
from hypothesis import strategies as st

# ---- the line reader -------------------------------------------------------------------------


def collect(chunks, max_line=32, prompt=None, raw_prefix=None, raw_field=0):
    events = []
    reader = None

    def on_line(buf, n):
        events.append(("line", bytes(buf[:n])))
        if n and buf[0] == ord("!"):  # a line that re-arms the prompt, as the engine would
            reader.prompt = prompt

    reader = at.LineReader(on_line, max_line, lambda: events.append(("prompt",)))
    reader.prompt = prompt
    reader.raw_prefix = raw_prefix
    reader.raw_field = raw_field
    for chunk in chunks:
        reader.feed(chunk)
    return events, reader.overflows


ALPHABET = st.sampled_from(
    [b"\r", b"\n", b"\r\n", b",", b">", b"@", b" ", b"OK", b"+X: ", b"1", b"!", b"\x00", b"\xff", b'"']
)
STREAMS = st.lists(st.one_of(ALPHABET, st.binary(max_size=40)), max_size=40).map(b"".join)


def chop(data, cuts):
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


@settings(max_examples=400, deadline=None)
@given(
    STREAMS,
    st.lists(st.integers(min_value=0, max_value=2000), max_size=30),
    st.sampled_from([None, ord(">"), ord("@")]),
    st.sampled_from([(None, 0), (b"+X: ", 0), (b"+X: ", 1)]),
)
def test_chopped_stream_parses_like_whole(data, cuts, prompt, raw):
    whole = collect([data], prompt=prompt, raw_prefix=raw[0], raw_field=raw[1])
    assert collect(chop(data, cuts), prompt=prompt, raw_prefix=raw[0], raw_field=raw[1]) == whole
    singles = [data[i : i + 1] for i in range(len(data))]
    assert collect(singles, prompt=prompt, raw_prefix=raw[0], raw_field=raw[1]) == whole


@settings(max_examples=300, deadline=None)
@given(STREAMS)
def test_lines_are_bounded_and_never_blank(data):
    events, overflows = collect([data], max_line=16, raw_prefix=b"+X: ")
    for ev in events:
        if ev[0] == "line":
            assert 0 < len(ev[1]) <= 16
    assert overflows >= 0


def test_line_endings_and_overflow():
    events, overflows = collect([b"A\rB\nC\r\n\r\n   \r\nD" + b"x" * 40 + b"\r\nE\r"])
    assert events == [("line", b"A"), ("line", b"B"), ("line", b"C"), ("line", b"E")]
    assert overflows == 1


def test_raw_payload_may_hold_line_endings():
    events, _ = collect([b"+X: 5,a\r\n,b\r\n\r\nOK\r\n"], raw_prefix=b"+X: ")
    assert events == [("line", b"+X: 5,a\r\n,b"), ("line", b"OK")]


def test_quoted_raw_payload_after_a_length_field():
    # u-blox binary +USORF: the length is field 3, the bytes follow it in quotes.
    payload = b'\r\n\x00\x00",\r'
    line = b'+USORF: 0,"1.2.3.4",5,%d,"%s"' % (len(payload), payload)
    events, overflows = collect([line + b"\r\nOK\r\n"], max_line=64, raw_prefix=b"+USORF: ", raw_field=3)
    assert events == [("line", line), ("line", b"OK")] and overflows == 0
    events, overflows = collect([line + b"\r\nOK\r\n"], max_line=24, raw_prefix=b"+USORF: ", raw_field=3)
    assert events == [("line", b"OK")] and overflows == 1  # too long: lost whole, and counted


# ---- the engine ----------------------------------------------------------------------------------
def engine_with(replies, chunk=64, **kw):
    def respond(cmd):
        for prefix, reply in replies:
            if cmd.startswith(prefix):
                return reply
        return b""

    stream = ScriptedStream(respond, chunk)
    engine = at.AtEngine(stream, **kw)
    engine.default_timeout_ms = 200
    return engine, stream


def test_urcs_between_reply_lines_and_cereg_routing():
    seen = []
    engine, _ = engine_with(
        [
            (
                b"AT+CEREG?",
                b'\r\n+CEREG: 5,"0A1B","01A2D001",7\r\n+CEREG: 2,1,"0A1B","01A2D001",7\r\n+QIURC: "recv",3\r\n\r\nOK\r\n',
            )
        ],
        chunk=3,
    )
    engine.add_urc(
        b"+CEREG:",
        lambda b, n: seen.append(bytes(b[:n])),
        lambda b, n: not (48 <= b[b.find(b",") + 1] <= 57) if b.find(b",", 0, n) > 0 else True,
    )
    engine.add_urc(b"+QIURC:", lambda b, n: seen.append(at.field_int(b, n, 1)))
    lines = engine.command(b"AT+CEREG?", prefix=b"+CEREG:")
    assert lines == [b'+CEREG: 2,1,"0A1B","01A2D001",7']
    assert seen == [b'+CEREG: 5,"0A1B","01A2D001",7', 3]


@pytest.mark.parametrize(
    "reply,error,code",
    [
        (b"\r\n+CME ERROR: 16\r\n", at.CmeError, 16),
        (b"\r\n+CMS ERROR: 304\r\n", at.CmsError, 304),
        (b"\r\nERROR\r\n", at.AtCommandError, None),
        (b"\r\nSEND FAIL\r\n", at.AtCommandError, None),
        (b"\r\n+CME ERROR: SIM busy\r\n", at.CmeError, -1),
    ],
)
def test_error_results_are_typed(reply, error, code):
    engine, _ = engine_with([(b"AT+X", b"\r\n+X: partial\r\n" + reply)])
    with pytest.raises(error) as info:
        engine.command(b"AT+X=1")
    assert type(info.value) is error
    assert info.value.code == code and info.value.command == b"AT+X=1"
    assert info.value.lines == [b"+X: partial"]
    assert isinstance(info.value, at.ModemError) and not isinstance(info.value, OSError)


def test_timeout_carries_partial_response():
    engine, _ = engine_with([(b"AT+SLOW", b"\r\n+SLOW: 1\r\n")])
    with pytest.raises(at.AtTimeout) as info:
        engine.command(b"AT+SLOW", 50)
    assert info.value.lines == [b"+SLOW: 1"]


def test_prompt_then_payload():
    def respond(cmd):
        if cmd.startswith(b"AT+USOST"):
            return b"@"
        if cmd == b"\x00\r\n>@":
            return b"\r\n+USOST: 0,4\r\n\r\nOK\r\n"
        return b""

    stream = ScriptedStream(respond, 1)
    engine = at.AtEngine(stream)
    assert engine.command(b'AT+USOST=0,"1.2.3.4",5,4', payload=b"\x00\r\n>@", prompt=b"@") == [b"+USOST: 0,4"]
    assert stream.written == [b'AT+USOST=0,"1.2.3.4",5,4\r', b"\x00\r\n>@"]


def test_echo_after_echo_off_means_the_modem_restarted():
    engine, _ = engine_with([(b"AT+CSQ", b"AT+CSQ\r\r\n+CSQ: 1,99\r\n\r\nOK\r\n")])
    engine.echo_off = True
    with pytest.raises(at.ModemRebooted):
        engine.command(b"AT+CSQ")
    assert engine.rebooted and engine.reboots == 1


def test_boot_urc_mid_command_raises_rebooted():
    engine, _ = engine_with([(b"AT+CGSN", b"\r\nRDY\r\n")])
    with pytest.raises(at.ModemRebooted):
        engine.command(b"AT+CGSN")


def test_field_helpers():
    line = bytearray(b'+QIURC: "recv",11,"a,b",7')
    n = len(line)
    assert at.field_int(line, n, 1) == 11 and at.field_int(line, n, 0) == -1
    assert at.field_count(line, n) == 4
    assert at.fields(bytes(line)) == ["recv", "11", "a,b", "7"]


# ---- the engine fed the same script in any chunks ------------------------------------------------
class ChunkedStream(ScriptedStream):
    """Hands out the queued reply in the given chunk sizes, in turn (a UART's reads never line
    up with the modem's writes)."""

    def __init__(self, responder, sizes):
        super().__init__(responder, 1 << 20)
        self.sizes = sizes or [1 << 20]
        self.reads = 0

    def readinto(self, buf):
        self.chunk = self.sizes[self.reads % len(self.sizes)]
        self.reads += 1
        return super().readinto(buf)


ENDINGS = st.sampled_from([b"\r\n", b"\r", b"\n", b"\r\n\r\n"])
REPLY_PART = st.one_of(
    st.integers(0, 99).map(lambda i: b"+R: %d" % i),  # the command's reply
    st.integers(0, 99).map(lambda i: b"+U: %d" % i),  # a URC
    st.sampled_from([b'+CEREG: 5,"0A1B","01A2D001",7', b'+CEREG: 2,1,"0A1B","01A2D001",7']),
    st.just(b"   "),  # all-space: skipped
)
FINAL = st.sampled_from([b"OK", b"ERROR", b"+CME ERROR: 16", b"+CMS ERROR: 304", b"SEND FAIL"])
REPLY = st.tuples(st.lists(st.tuples(REPLY_PART, ENDINGS), max_size=6), FINAL, ENDINGS).map(
    lambda r: b"".join(b"\r\n" + line + end for line, end in r[0]) + b"\r\n" + r[1] + r[2]
)


def run_script(replies, sizes):
    """Runs one AT+Cn command per reply; returns each command's outcome and the URCs seen."""
    stream = ChunkedStream(lambda cmd: replies[int(cmd[4:-1])], sizes)
    engine = at.AtEngine(stream)
    engine.default_timeout_ms = 1000
    urcs = []
    engine.add_urc(b"+U:", lambda b, n: urcs.append(bytes(b[:n])))
    engine.add_urc(
        b"+CEREG:", lambda b, n: urcs.append(bytes(b[:n])), lambda b, n: not 48 <= b[b.find(b",") + 1] <= 57
    )
    outcomes = []
    for i in range(len(replies)):
        try:
            outcomes.append(("ok", engine.command(b"AT+C%d" % i, prefix=b"+CEREG:")))
        except at.AtCommandError as e:
            outcomes.append((type(e).__name__, e.code, e.lines, e.result))
    return outcomes, urcs


@settings(max_examples=150, deadline=None)
@given(st.lists(REPLY, min_size=1, max_size=6), st.lists(st.integers(1, 24), min_size=1, max_size=12))
def test_engine_results_do_not_depend_on_chunking(replies, sizes):
    assert run_script(replies, sizes) == run_script(replies, [])


ENGINE_SCRIPT = """
from cellguard import at
from atstream import ScriptedStream
replies = {b'AT+CEREG?': b'\\r\\n+CEREG: 1\\r\\n+CEREG: 2,5\\r\\n\\r\\nOK\\r\\n',
           b'AT+CIMI': b'\\r\\n+CME ERROR: 10\\r\\n'}
s = ScriptedStream(lambda c: replies.get(c.rstrip(b'\\r'), b'\\r\\nOK\\r\\n'), 2)
e = at.AtEngine(s)
urcs = []
e.add_urc(b'+CEREG:', lambda b, n: urcs.append(at.field_int(b, n, 0)), lambda b, n: at.field_count(b, n) < 2)
print(e.command(b'AT+CEREG?', prefix=b'+CEREG:'), urcs)
try:
    e.command(b'AT+CIMI')
except at.CmeError as x:
    print('CME', x.code, x.command)
s.feed(b'\\r\\n+CEREG: 3\\r\\n' + b'z' * 300 + b'\\r\\n')
e.drain()
print(urcs, e.reader.overflows)
"""


def test_engine_same_on_both_runtimes(runtime):
    out = runtime.run(ENGINE_SCRIPT).split("\n")
    assert out[0] == "[b'+CEREG: 2,5'] [1]"
    assert out[1] == "CME 10 b'AT+CIMI'"
    assert out[2] == "[1, 3] 1"


# ---- bounded replies, the idle callback, no re-entry (on the MicroPython unix port) ------------
FLOOD_SCRIPT = """
from cellguard import at
from atstream import ScriptedStream

class Flood(ScriptedStream):
    # AT+FLOOD is answered with 2000 lines of ~100 bytes, made as they are read.
    left = 0
    def write(self, buf):
        if buf.startswith(b'AT+FLOOD'):
            self.left = 2000
            return len(buf)
        return super().write(buf)
    def readinto(self, buf):
        if self.left and self._pos >= len(self._rx):
            self.left -= 1
            self.feed(b'\\r\\n+FLOOD: %d ' % self.left + b'x' * 90 + (b'' if self.left else b'\\r\\nOK\\r\\n'))
        return super().readinto(buf)
    def wait_readable(self, timeout_ms):
        return bool(self.left) or super().wait_readable(timeout_ms)

s = Flood(lambda c: b'\\r\\n+R: 1\\r\\n\\r\\nOK\\r\\n', 64)
e = at.AtEngine(s)
try:
    e.command(b'AT+FLOOD')
except at.ReplyTooLong as x:
    print('TOO LONG', len(x.lines), x.lines[0][:10], str(x)[:40])
print('NEXT', e.command(b'AT+R'))
"""


def test_a_flooded_reply_is_capped_with_a_clear_error(mp):
    # 2000 lines of ~100 bytes (200 KB) would not fit the 128 KB heap if the engine kept them all.
    out = mp.run(FLOOD_SCRIPT).split("\n")
    # The byte cap (2 x the 256-byte line buffer) stops it first: 4 lines of ~100 bytes kept.
    assert out[0] == "TOO LONG 4 b'+FLOOD: 19' reply to AT+FLOOD too long: kept 4 lines"
    assert out[1] == "NEXT [b'+R: 1']"  # still in step with the modem


def test_reply_line_cap():
    many = b"".join(b"\r\n+M: %d" % i for i in range(50)) + b"\r\nOK\r\n"
    engine, _ = engine_with([(b"AT+MANY", many), (b"AT", b"\r\nOK\r\n")])
    with pytest.raises(at.ReplyTooLong) as info:
        engine.command(b"AT+MANY")
    assert len(info.value.lines) == at.MAX_REPLY_LINES == 32 and info.value.lines[-1] == b"+M: 31"
    assert engine.command(b"AT") == []  # the engine is still in step


def test_reply_byte_cap():
    engine, _ = engine_with([(b"AT+BIG", b"".join(b"\r\n" + b"y" * 30 for _ in range(5)) + b"\r\nOK\r\n")])
    engine.max_reply_bytes = 100
    with pytest.raises(at.ReplyTooLong) as info:
        engine.command(b"AT+BIG")
    assert len(info.value.lines) == 3


IDLE_SCRIPT = """
from cellguard import at, runtime
from atstream import ScriptedStream

# The test's own clock: time passes only while the engine waits on the modem, so the gaps between
# idle calls are the engine's, not the machine's load (a busy machine made this flaky on wall time).
now = [0]
runtime.ticks_ms = lambda: now[0]

class SlowModem(ScriptedStream):
    # Answers 400 ms after the command, like a modem searching for a network.
    def write(self, buf):
        self.due = now[0] + 400
        return super().write(buf)
    def wait_readable(self, timeout_ms):
        left = self.due - now[0]
        if left > 0:
            now[0] += min(left, timeout_ms)
            return False
        return super().wait_readable(timeout_ms)

s = SlowModem(lambda c: b'\\r\\n+COPS: 0\\r\\n\\r\\nOK\\r\\n')
e = at.AtEngine(s)
calls = []
def idle():
    calls.append(runtime.ticks_ms())
    if len(calls) == 2:
        try:
            e.command(b'AT+CSQ')  # e.g. the console asking for status while the attach waits
        except at.ModemBusy as x:
            print('BUSY', x)
    if len(calls) == 3:
        raise ValueError('a console bug')
e.idle = idle
print(e.command(b'AT+COPS=0'))
gaps = [runtime.ticks_diff(b, a) for a, b in zip(calls, calls[1:])]
print('CALLS', len(calls) >= 7, 'MAXGAP', max(gaps) <= 70, 'ERRORS', e.idle_errors)
"""


def test_idle_callback_runs_while_a_command_waits(mp):
    out = mp.run(IDLE_SCRIPT).split("\n")
    assert out[0] == "BUSY AT+CSQ while AT+COPS=0 waits"
    assert out[1] == "[b'+COPS: 0']"  # neither the nested call nor the idle error broke it
    assert out[2] == "CALLS True MAXGAP True ERRORS 1"


CONSOLE_IDLE_SCRIPT = """
from cellguard import at, console, runtime
from atstream import ScriptedStream

# The test's own clock, as in IDLE_SCRIPT: time passes only while the engine waits on the modem (on
# wall time, a loaded machine that paused 300 ms before the first wait saw the reply at once, and
# the console never got its turn).
now = [0]
runtime.ticks_ms = lambda: now[0]

typed = []
class SlowModem(ScriptedStream):
    def write(self, buf):
        self.due = now[0] + 300
        typed.extend(b'version\\rrepl\\r')  # someone types while the attach waits
        return super().write(buf)
    def wait_readable(self, timeout_ms):
        left = self.due - now[0]
        if left > 0:
            now[0] += min(left, timeout_ms, 10)
            return False
        return super().wait_readable(timeout_ms)

def read_byte(wait_ms=None):
    return typed.pop(0) if typed else None

out = []
c = console.Console(out.append, locked=False)
engine = at.AtEngine(SlowModem(lambda cmd: b'\\r\\nOK\\r\\n'), idle=console.service)
state = []
def idle():  # the application's step: a long attach
    if not state:
        state.append(engine.command(b'AT+CGACT=1,1'))
        state.append(any('cellguard' in s for s in out))  # answered before the attach ended
print(console.serve(c, read_byte, idle), state)
"""


def test_console_answers_from_the_engine_idle_callback(mp):
    # main.py hands console.service to the engine: the console answers during the attach, and a
    # line that ends the console there ("repl") ends serve() as it would outside.
    out = mp.run(CONSOLE_IDLE_SCRIPT).split("\n")
    assert out[0] == "repl [[], True]"
