"""The emulated SIM's non-volatile state in a file, so it survives a restart as a real SIM does.

A real SIM keeps its PIN, whether the PIN lock is on and its retry counters in its own memory: pull
the power, put it back, and the unit's device PIN still opens it. The emulator's `Sim` is a plain
dataclass; `persistent_sim(path)` returns one that writes those fields to `path` whenever one of them
changes (atomically, so a kill -9 between two commands keeps the last state), and starts from what
the file holds. `unlocked` (PIN entered since power-up) is volatile on a SIM, so it is never saved.

    cellguard emulator --state build/virtual-board/flash.sim.json
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cgsim.modem import Sim

# What a SIM card keeps across a power cycle (the identity too: a file from another SIM is refused).
SAVED = ("iccid", "imsi", "pin", "puk", "pin_enabled", "pin_left", "puk_left")
MAX_STATE_BYTES = 4096  # a state file bigger than this is not ours: refuse it instead of parsing it


class SimStateError(ValueError):
    """The state file exists but does not hold a SIM's state."""


class PersistentSim(Sim):
    """A Sim that saves its non-volatile fields to `_state_path` on every change."""

    _state_path: Path | None = None

    def __setattr__(self, name: str, value) -> None:
        changed = name in SAVED and getattr(self, name, object()) != value
        super().__setattr__(name, value)
        if changed and self._state_path is not None:
            save(self, self._state_path)


def save(sim: Sim, path: Path) -> None:
    data = {name: getattr(sim, name) for name in SAVED}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: Path) -> dict:
    """The saved fields, or {} when there is no file yet (a new SIM)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    if len(raw) > MAX_STATE_BYTES:
        raise SimStateError(f"{path}: {len(raw)} bytes is not a SIM state file")
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise SimStateError(f"{path}: not JSON ({e}); delete it to start with a new SIM") from e
    defaults = Sim()
    fields = {}
    for name in SAVED:
        if name not in data or type(data[name]) is not type(getattr(defaults, name)):
            raise SimStateError(f"{path}: no valid {name!r}; delete it to start with a new SIM")
        fields[name] = data[name]
    return fields


def persistent_sim(path: str | Path, **new_sim) -> PersistentSim:
    """The SIM kept in `path`: its saved state, or a new SIM built from `new_sim` (and saved)."""
    path = Path(path)
    sim = PersistentSim(**(load(path) or new_sim))
    sim._state_path = path
    save(sim, path)
    return sim
