# mpremote against a locked console: answer its raw-REPL handshake just far enough that it stops at
# once and prints why, instead of waiting for a banner that never comes (on a pty its reads have no
# timeout, so it would wait until killed).
#
# What mpremote's transport_serial.py sends and waits for, and what this answers (nothing ever runs):
#   Ctrl-A                 waits for "raw REPL; CTRL-B to exit\r\n>"   the banner
#   Ctrl-D (soft reset)    waits for "soft reboot\r\n", the banner     "locked: no soft reboot\r\n" + banner
#   Ctrl-E A Ctrl-A        reads 2 bytes (raw paste?)                  "R\x00": not supported
#   code, Ctrl-D           "OK", output, \x04, error output, \x04, ">" "OK", none, the reason as the error
#                          (after a declined raw paste, an empty block too)
# mpremote then raises with the reason as the device's error output and exits 1 (`mpremote exec`
# prints it; `mpremote fs ...` says "Error with transport:" and the reason). Ctrl-B ends it.
# The code is never stored: only whether any byte came since the last Ctrl-A/Ctrl-D, and the last
# two bytes (to spot Ctrl-E A), so a flood costs nothing.

BANNER = "raw REPL; CTRL-B to exit\r\n>"
REASON = ("locked console: this production unit has no Python REPL; open it with "
          "`cellguard status --port PORT --service open-repl` (docs/flashing.md)")


class RawRefusal:
    def __init__(self, write, reason=REASON):
        self.write = write
        self.reason = reason
        self._code = False  # bytes of a code block since the last prompt
        self._prev = 0
        self._prev2 = 0

    def start(self):
        """The Ctrl-A that began the handshake."""
        self.write("\r\n" + BANNER)

    def feed(self, b):
        """One byte from the host; True when it left the raw REPL (Ctrl-B)."""
        prev, prev2 = self._prev, self._prev2
        self._prev2, self._prev = prev, b
        if b == 2:
            self.write("\r\n")
            return True
        if b == 1:
            if prev == 0x41 and prev2 == 5:
                self.write("R\x00")  # raw paste declined: mpremote sends the code plainly
                # and its Ctrl-D ends a block even when it is empty (cellguard flash sends one
                # to tell a locked unit from an open one): refused, not taken for a soft reset
                self._code = True
            else:
                self.write("\r\n" + BANNER)
                self._code = False
        elif b == 4:
            if self._code:
                self.write("OK\x04" + self.reason + "\r\n\x04>")
            else:
                self.write("locked: no soft reboot\r\n" + BANNER)
            self._code = False
        elif b == 3:
            self._code = False  # Ctrl-C drops a half-sent block, as the raw REPL does
        else:
            self._code = True
        return False
