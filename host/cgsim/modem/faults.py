"""Fault injection for the emulated modem: what a test asks to go wrong, and when.

FaultPlan records the per-command faults (each armed for the next `count` commands starting with a
prefix); FaultInjection is the public API the ModemEmulator offers tests (mixed into it), every
method a fault a real modem or network has shown."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class FaultPlan:
    drop: list[list] = field(default_factory=list)  # [prefix, count]
    delay: list[list] = field(default_factory=list)  # [prefix, count, seconds]
    cme: list[list] = field(default_factory=list)  # [prefix, count, code]
    burst: list[list] = field(default_factory=list)  # [prefix, count, lines, position]
    reboot_during: list[list] = field(default_factory=list)  # [prefix, after_lines]
    drop_prompt: list[list] = field(default_factory=list)  # [prefix, count]
    hooks: list[list] = field(default_factory=list)  # [prefix, count, action]
    replace: list[list] = field(default_factory=list)  # [prefix, count, lines]
    hang: str | None = None  # None, "cfun" or "pin"

    @staticmethod
    def take(faults: list[list], cmd: str) -> list | None:
        """The first armed fault for cmd, one use spent; None if there is none."""
        for f in faults:
            if cmd.upper().startswith(f[0]) and f[1] > 0:
                f[1] -= 1
                return f
        return None

    def take_reboot(self, cmd: str) -> list | None:
        upper = cmd.upper()
        for item in self.reboot_during:
            if upper.startswith(item[0]):
                self.reboot_during.remove(item)
                return item
        return None


class FaultInjection:
    """The fault API of ModemEmulator (self.faults is its FaultPlan; self.call runs a function in
    the emulator's thread)."""

    faults: FaultPlan

    def drop_response(self, prefix: str, count: int = 1) -> None:
        """The next `count` commands starting with prefix get no response (the action happens)."""
        self.faults.drop.append([prefix.upper(), count])

    def delay_response(self, prefix: str, seconds: float, count: int = 1) -> None:
        self.faults.delay.append([prefix.upper(), count, seconds])

    def cme_error(self, prefix: str, code: int, count: int = 1) -> None:
        """The next `count` commands starting with prefix fail with +CME ERROR: code."""
        self.faults.cme.append([prefix.upper(), count, code])

    def urc_burst(self, prefix: str, lines: list[str], before: bool = False) -> None:
        """Put these URC lines between the lines of the next response to a prefix command (after
        its first line; before=True: ahead of every line of it, e.g. a URC ahead of an IMSI)."""
        self.faults.burst.append([prefix.upper(), 1, lines, 0 if before else 1])

    def answer_with(self, prefix: str, lines: list[str], count: int = 1) -> None:
        """The next `count` commands starting with prefix are answered with these lines and OK
        (what a modem with a corrupted or foreign identity answers, e.g. ["GARBAGE-IMEI"])."""
        self.faults.replace.append([prefix.upper(), count, lines])

    def identity_answer(self, kind: str, value: str, urcs: list[str] | tuple = ()) -> None:
        """The next identity command of this kind ("IMEI", "ICCID", "IMSI"), in the family's own
        spelling, is answered with `value` in the family's reply format, after these URC lines
        (inside the reply, as modems do): e.g. ("IMSI", "901280000012345", ["DST: 1"])."""
        command, prefix = self.vendor.identities[kind]
        self.answer_with(command, [*urcs, prefix + value])

    def reboot_during(self, prefix: str, after_lines: int = 0) -> None:
        """The modem restarts in the middle of the next command starting with prefix: before it
        answers, or (after_lines=n) after the first n lines of its reply."""
        self.faults.reboot_during.append([prefix.upper(), after_lines])

    def drop_prompt(self, prefix: str, count: int = 1) -> None:
        """The prompt for the next payload command is lost; the modem still waits for the payload."""
        self.faults.drop_prompt.append([prefix.upper(), count])

    def on_command(self, prefix: str, action: Callable[[], None], count: int = 1) -> None:
        """Run action (in the emulator thread) when the next command starting with prefix arrives,
        before it is answered: a way to make a fault land at an exact point of a driver run."""
        self.faults.hooks.append([prefix.upper(), count, action])

    def hang(self, until: str = "cfun") -> None:
        """Stop answering. until="cfun": the dialect's software reset (AT+CFUN=1,1, AT+CFUN=15 on
        u-blox, AT#XRESET on the nRF SLM) still resets it; "pin": only the reset wire does."""
        self.faults.hang = until

    def inject(self, data: bytes) -> None:
        """Write these bytes (noise, garbage, a too-long line) to the device now."""
        self.call(lambda: self._write(data))

    def push_urc(self, line: str) -> None:
        self.call(lambda: self._urc(line))

    def reboot(self, boot_urcs: list[str] | None = None) -> None:
        """A spontaneous restart (brown-out, watchdog). boot_urcs: what it prints when it is back
        instead of the dialect's usual lines (e.g. ["+CFUN: 1"]: the RDY was lost)."""
        self.call(lambda: self._reboot(boot_urcs))

    def remove_sim(self) -> None:
        self.call(self.remove_sim_now)

    def insert_sim(self, sim) -> None:
        """A (possibly different) SIM is inserted: the modem restarts, as most do on a SIM swap."""

        def do():
            self.sim = sim
            self._reboot()

        self.call(do)

    def lose_registration(self, regain_after_s: float | None = None) -> None:
        def do():
            self.reg.set(2)
            if regain_after_s is not None:
                self._after(regain_after_s, self._registered)

        self.call(do)

    def deactivate_pdp(self) -> None:
        """The network deactivates the PDP context; the modem's sockets go with it."""
        self.call(self._deactivate_pdp)

    def remote_close(self, ident: int | None = None) -> None:
        """The modem closes a socket on its own (the peer or the network ended it) and says so
        with the dialect's URC (+UUSOCL, +CASTATE, +QIURC: "closed", #XSOCKET ... closed).
        ident None: every open socket."""
        self.call(lambda: self._remote_close(ident))
