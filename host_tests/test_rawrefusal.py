"""cgboot.rawrefusal: the exact bytes mpremote's transport_serial sends to enter a raw REPL and run
code, and what a locked console answers (on MicroPython and CPython). The end-to-end test with the
real mpremote is test_console_production.py::test_repl_escape_attempts_fail."""

SCRIPT = r"""
from cgboot.rawrefusal import RawRefusal
out = []
r = RawRefusal(out.append, 'REASON')
r.start()
ended = []
for b in (b'\x04' + b'\x05A\x01' + b'import os\nprint(1)\n' + b'\x04' + b'\x03\x04' + b'\r\x02'):
    ended.append(r.feed(b))
print(repr(''.join(out)))
print('ENDED', ended.index(True), len(ended) - 1)
"""


def test_mpremotes_handshake_gets_the_banner_no_paste_and_the_reason_as_the_error(runtime):
    out = runtime.run(SCRIPT).strip().splitlines()
    expected = (
        "\r\nraw REPL; CTRL-B to exit\r\n>"                    # Ctrl-A: the banner mpremote waits for
        "locked: no soft reboot\r\nraw REPL; CTRL-B to exit\r\n>"  # Ctrl-D: nothing is reset, and it says so
        "R\x00"                                               # raw paste: not supported
        "OK\x04REASON\r\n\x04>"                               # the code: nothing runs; the reason is the error
        "locked: no soft reboot\r\nraw REPL; CTRL-B to exit\r\n>"  # Ctrl-C dropped the block; Ctrl-D on nothing
        "\r\n"                                                # Ctrl-B: back to the console
    )
    assert out[0] == repr(expected)
    _, first_end, last = out[1].split()
    assert first_end == last  # only the final Ctrl-B leaves


EMPTY_BLOCK = r"""
from cgboot.rawrefusal import RawRefusal
out = []
r = RawRefusal(out.append, 'REASON')
r.start()
for b in b'\x05A\x01' + b'\x04':
    r.feed(b)
print(repr(''.join(out)))
"""


def test_an_empty_block_after_the_declined_raw_paste_is_refused_not_taken_for_a_soft_reset(runtime):
    # mpremote's exec("") (cellguard flash sends it to tell a locked unit from an open one): after
    # "R\x00" its Ctrl-D ends a block, and mpremote reads "OK" next; "locked: no soft reboot" there
    # made it fail with "could not exec command (response: b'lo')", without the reason.
    out = runtime.run(EMPTY_BLOCK).strip().splitlines()
    assert out[0] == repr("\r\nraw REPL; CTRL-B to exit\r\n>" "R\x00" "OK\x04REASON\r\n\x04>")
