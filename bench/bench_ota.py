"""Over-the-air update figures: the MicroPython device (unix port, littlefs on the flash simulator,
the real outbox and update session) fetching signed images from the real hub over real UDP
(host_tests/otakit.py), every byte on the air counted with its IPv4/UDP headers (28 bytes).

- ota.wire_ratio: bytes on the air in both directions (HELLO, offer, DACK, requests, chunks), with
  headers, over the image's bytes, for a 64 KiB image at the defaults. Beside it, the same for the
  other request patterns measured to choose the default (chunk size x chunks per request).
- ota.days_to_complete_default: days (UTC days begun) for a slot-sized image (128 KiB slot) at the
  default update budget, with 24 readings a day going out meanwhile.
- ota.readings_delayed: of those readings, how many were not out by the end of their day or were
  stopped by the readings' budget (outbox budget_stops).
- ota.refetched_bytes_after_cut: after a power cut at each of several flash operations mid-download,
  the most bytes any one cut made the device fetch again (bytes it had received and lost).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from boot_kit import make_app, make_kit
from cgdev import image as image_tool
from otakit import OtaRig

WIRE = 28
SLOT = 128 * 1024

GOALS = {
    "ota.wire_ratio": ("<=", 1.10),
    "ota.days_to_complete_default": ("<=", 2),
    "ota.readings_delayed": ("==", 0),
    "ota.refetched_bytes_after_cut": ("<=", 976),
}


def _air(report: dict) -> int:
    return sum(report["link"]["bytes"]) + WIRE * sum(report["link"]["datagrams"])


def _ratio(tmp: Path, kit, window: int = 0, chunk: int = 1024, max_datagram: int = 1024) -> float:
    with OtaRig(tmp, kit, window=window, max_datagram=max_datagram) as rig:
        with rig.hub.lock:  # one sitting: this figure is about bytes, not days
            rig.hub.store.queue_command(1_000_001, bytes([0x20, 5]) + (1 << 20).to_bytes(4, "big"))
        data = rig.publish("big64k_next", chunk=chunk)
        r = rig.until("done")
        return round(_air(r) / len(data), 4)


def _slot_image(root: Path, kit) -> Path:
    # A signed image as large as the slot takes (header, protected TLVs and signature included).
    for padding in range(SLOT - 3 * 1024, SLOT - 16 * 1024, -512):
        app = make_app(root / "apps" / "slotsize", "1.5.0", True, padding)
        payload = image_tool.build(app, root / "build" / "slotsize.romfs")
        out = image_tool.sign(kit.keys["ed_a"], payload, root / "build" / "slotsize.img", "1.5.0")
        if out.stat().st_size <= SLOT:
            return out
    raise RuntimeError("no slot-sized image")


def _days(tmp: Path, kit) -> tuple[int, int, int]:
    """(days, readings delayed, image bytes) at the default budgets."""
    with OtaRig(tmp, kit, blocks=48) as rig:
        rig.publish("slotsize")
        size = kit.images["slotsize"].stat().st_size
        days, delayed = 1, 0
        while True:
            rig.do("read 24")  # a day's readings (hourly), taken at its start: the worst case
            r = rig.until("delivered")
            delayed += r["pending"] + r["outbox"]["budget_stops"]
            r = rig.until("any:done,budget")
            if r["reboot_requested"]:
                return days, delayed, size
            rig.do("day")
            days += 1
            if days > 10:
                raise RuntimeError(f"no end: {r}")


def _refetch(tmp: Path, kit) -> int:
    """The most bytes one power cut made the device fetch again, over several cut points."""
    worst = 0
    with OtaRig(tmp, kit) as rig:
        size = len(rig.publish("big64k_next"))
        r = rig.until("have:8000")
        for n in (1, 2, 3, 4, 6, 9):
            if r["have"] >= size - 8000:
                break
            lost_before = r["chunk_bytes"] - r["have"]
            rig.do(f"cut {n}")
            out = rig.do(f"until have:{r['have'] + 6000} 3000")
            r = out["report"]
            assert out["ok"], out
            worst = max(worst, r["chunk_bytes"] - r["have"] - lost_before if out["ok"] == "cut" else 0)
            r = rig.until(f"have:{r['have'] + 2000}")  # going on after the reboot
        r = rig.until("done")
        assert r["have"] == size
    return worst


def run() -> dict:
    root = Path(tempfile.mkdtemp(prefix="bench_ota_"))
    kit = make_kit(root / "kit", ("v1", "big64k_next"))
    kit.images["slotsize"] = _slot_image(root / "kit", kit)
    out: dict[str, float] = {}
    out["ota.wire_ratio"] = _ratio(root / "r0", kit)
    # The patterns measured to choose the default (chunk bytes x chunks per request):
    out["ota.wire_ratio.chunk256_w1"] = _ratio(root / "r1", kit, window=1, chunk=256)
    out["ota.wire_ratio.chunk976_w1"] = _ratio(root / "r2", kit, window=1)
    out["ota.wire_ratio.chunk976_w8"] = _ratio(root / "r3", kit, window=8)
    out["ota.wire_ratio.nrf91_chunk652_w6"] = _ratio(root / "r4", kit, max_datagram=700)
    days, delayed, size = _days(root / "d", kit)
    out["ota.days_to_complete_default"] = days
    out["ota.slot_image_bytes"] = size
    out["ota.readings_delayed"] = delayed
    out["ota.refetched_bytes_after_cut"] = _refetch(root / "c", kit)
    return out


if __name__ == "__main__":
    print(run())
