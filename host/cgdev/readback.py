"""Step 8 of a flash: read the unit's status back and decide whether the flash worked.

Booting the flashed firmware is not enough: a unit whose SIM lock refuses its data session (a SIM
that lost its PIN lock, a foreign SIM, a PIN the SIM no longer takes) never reports a reading, so a
flash that ends there has failed, and says why. The lock is checked when the application first
attaches, a moment after boot; until then the page has no `sim.state`, so the read-back asks again
(each answer is an event; the deadline only bounds a unit that never gets that far).
"""

from __future__ import annotations

import time

# simlock.DATA_ALLOWED on the device: the only outcomes under which the unit opens a data session.
DATA_ALLOWED = ("OK", "UNLOCKED")
LOCK_DEADLINE_S = 120.0  # a modem that takes longer than this to answer the lock's questions is a fault
POLL_S = 0.5


class ReadBackError(Exception):
    pass


def lock_outcome(snap: dict) -> str | None:
    return (snap.get("sim") or {}).get("state")


def wait_for_lock(status, first: dict, deadline_s: float = LOCK_DEADLINE_S) -> dict:
    """The first status snapshot with a SIM-lock outcome. `status` asks the unit again.

    A unit with no application (no modem, no app.json) never checks its lock: its first snapshot is
    returned as it is.
    """
    snap = first
    deadline = time.monotonic() + deadline_s
    while lock_outcome(snap) is None and "app" in snap:
        if time.monotonic() > deadline:
            raise ReadBackError(f"the unit did not check its SIM lock within {deadline_s:.0f} s of booting: {snap}")
        time.sleep(POLL_S)
        snap = status()
    return snap


def judge_lock(snap: dict, provisioned: bool) -> str:
    """'' when the unit may use its data session, else why it may not (the flash then fails)."""
    outcome = lock_outcome(snap)
    if outcome is None or outcome in DATA_ALLOWED:
        return ""
    if outcome == "UNPROVISIONED" and not provisioned:
        return ""  # --no-provision asked for exactly this
    reason = (snap.get("sim") or {}).get("reason") or ""
    return f"the unit refuses its data session: SIM lock {outcome}" + (f" ({reason})" if reason else "")
