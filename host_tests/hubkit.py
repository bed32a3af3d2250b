"""Test helpers shared by the hub and end-to-end tests: a registered hub and a CPython device."""

from __future__ import annotations

import io
import json
from pathlib import Path

from cellguard import crypto, message
from cghub import server as hubmod

ROOT = bytes(range(32))
KEY_ID = 1_000_001
DEVICE = "dev-1"


def make_hub(tmp_path: Path, root: bytes = ROOT, key_id: int = KEY_ID, **kw) -> hubmod.Hub:
    store = hubmod.HubStore(tmp_path / "hub.sqlite")
    if store.device(key_id) is None:
        store.register_device(key_id, DEVICE, root, **kw)
    return hubmod.Hub(store, io.StringIO())


def lines(hub: hubmod.Hub) -> list[dict]:
    return [json.loads(x) for x in hub.out.getvalue().splitlines()]


class MemCounter:
    def __init__(self, start: int = 0):
        self.n = start

    def next(self) -> int:
        self.n += 1
        return self.n - 1


def device_channel(mode=message.ENCRYPT, root: bytes = ROOT, key_id: int = KEY_ID, **kw) -> message.Channel:
    def derive(label, n):
        return crypto.hkdf(root, b"cellguard/v1", label, n)

    return message.Channel(derive, MemCounter(), key_id=key_id, mode=mode, **kw)
