"""The emulated SIM card: a plain data object (what a test, a saved board state or a cloned-SIM
option sets up) and the card's own rules (PIN and PUK checks with their retry counters, the
+CPIN state word), kept apart from the modem so every dialect shares them."""

from __future__ import annotations

from dataclasses import dataclass

from .atcmd import (
    CME_INCORRECT_PASSWORD,
    CME_NOT_ALLOWED,
    CME_SIM_NOT_INSERTED,
    CME_SIM_PIN_REQUIRED,
    CME_SIM_PUK_REQUIRED,
    AtError,
)

PIN_ATTEMPTS = 3
PUK_ATTEMPTS = 10


@dataclass
class Sim:
    # ICCID and IMSI of a test SIM: the ICCID passes the Luhn check (ITU-T E.118), as a real one does.
    iccid: str = "89882806660000012346"
    imsi: str = "901280000012345"
    pin: str = "1234"
    puk: str = "12345678"
    pin_enabled: bool = False
    pin_left: int = PIN_ATTEMPTS
    puk_left: int = PUK_ATTEMPTS
    unlocked: bool = False  # PIN entered since power-up

    # ---- the card's rules (called by the modem with the card inserted) ----------------------
    def clone(self, imsi: str = "901289999999999", pin: str = "0000") -> Sim:
        """A card that copies this one's ICCID (printed on it, readable by anyone) but not its IMSI
        or PIN: PIN-locked, with its own retry counters."""
        return Sim(iccid=self.iccid, imsi=imsi, pin=pin, pin_enabled=True)

    def power_on(self) -> None:
        self.unlocked = False

    def blocked(self) -> bool:
        return self.puk_left <= 0 or self.pin_left <= 0

    def ready(self) -> bool:
        """Usable for registration and data (a card blocked by its PUK never is)."""
        return self.puk_left > 0 and (not self.pin_enabled or self.unlocked)

    def state_word(self) -> str:
        """The +CPIN word: READY, SIM PIN or SIM PUK (a blocked PUK stays SIM PUK here)."""
        if self.blocked():
            return "SIM PUK"
        if self.pin_enabled and not self.unlocked:
            return "SIM PIN"
        return "READY"

    def require_ready(self) -> Sim:
        """Raise the +CME error a command that needs the SIM gets, unless it is ready."""
        if self.blocked():
            raise AtError(CME_SIM_PUK_REQUIRED)
        if self.pin_enabled and not self.unlocked:
            raise AtError(CME_SIM_PIN_REQUIRED)
        return self

    def check_pin(self, pin: str) -> None:
        """A PIN presented to the card: a wrong one costs an attempt, a right one restores them."""
        if self.pin_left <= 0:
            raise AtError(CME_SIM_PUK_REQUIRED)
        if pin != self.pin:
            self.pin_left -= 1
            raise AtError(CME_SIM_PUK_REQUIRED if self.pin_left <= 0 else CME_INCORRECT_PASSWORD)
        self.pin_left = PIN_ATTEMPTS

    def enter_pin(self, pin: str) -> None:
        if not self.pin_enabled or self.unlocked:
            raise AtError(CME_NOT_ALLOWED)
        self.check_pin(pin)
        self.unlocked = True

    def enter_puk(self, puk: str, new_pin: str) -> None:
        if self.puk_left <= 0:
            raise AtError(CME_SIM_PUK_REQUIRED)
        if puk != self.puk:
            self.puk_left -= 1
            raise AtError(CME_INCORRECT_PASSWORD)
        self.puk_left, self.pin_left, self.pin, self.unlocked = PUK_ATTEMPTS, PIN_ATTEMPTS, new_pin, True

    def retries(self) -> tuple[int, int]:
        """(PIN attempts left, PUK attempts left): what each dialect's counter command reports."""
        return self.pin_left, self.puk_left


def inserted(sim: Sim | None) -> Sim:
    """The card, or the +CME error a command gets when there is none."""
    if sim is None:
        raise AtError(CME_SIM_NOT_INSERTED)
    return sim
