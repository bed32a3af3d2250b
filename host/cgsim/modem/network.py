"""The emulated network: what a test sets up (registration delay, denial, roaming, signal, the
credentials the APN wants) and the modem's EPS registration state as +CEREG reports it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# +CEREG <stat> (3GPP TS 27.007 7.2)
NOT_REGISTERED, HOME, SEARCHING, DENIED, ROAMING = 0, 1, 2, 3, 5


@dataclass
class Network:
    registration_delay_s: float = 0.0
    deny: bool = False
    roaming: bool = False
    rsrp: int = 60  # +CESQ index: dBm = rsrp - 141
    rsrq: int = 20  # +CESQ index: dB = rsrq / 2 - 20
    rssi: int = 20  # +CSQ index: dBm = -113 + 2 * rssi
    # (user, password) the network requires on the PDP context; None accepts anything
    credentials: tuple[str, str] | None = None

    def outcome(self) -> int:
        """The stat an attach ends in."""
        return DENIED if self.deny else ROAMING if self.roaming else HOME

    def accepts(self, user: str, password: str) -> bool:
        return self.credentials is None or (user, password) == tuple(self.credentials)


class Registration:
    """+CEREG state: the stat, the URC mode (AT+CEREG=<n>), and the URC a change sends."""

    def __init__(self, changed: Callable[[str | None], None]):
        self._changed = changed  # called with the +CEREG URC (None when +CEREG URCs are off)
        self.mode = 0
        self.stat = NOT_REGISTERED

    def registered(self) -> bool:
        return self.stat in (HOME, ROAMING)

    def set(self, stat: int) -> None:
        if stat == self.stat:
            return
        self.stat = stat
        self._changed("+CEREG: " + self.fields(stat) if self.mode else None)

    def fields(self, stat: int) -> str:
        if self.mode >= 2 and stat in (HOME, ROAMING):
            return f'{stat},"0A1B","01A2D001",7'
        return str(stat)
