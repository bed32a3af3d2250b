"""Power-loss proof of the boot part: a cut before every flash program/erase of an upgrade (download,
mark for test, trial boot, confirm) followed by a bad update's download, trial boots and revert;
then the same with torn writes. After each cut the device reboots and must run a verified image, with
a consistent state and a bootable slot, and the scenario must still end where it should."""

import json

import pytest
from boot_kit import device_script, session_kit

SWEEP_HEAP = "4M"  # the simulated flash and its retired copies live on the script's heap

_SWEEP = """
dev = bootsim.new_device(keys, imgs)
total = bootsim.run_scenario(dev, bootsim.upgrade_then_bad_plan)[0]
dev.unmount()
result = bootsim.sweep(keys, imgs, range(%d, total, %d), %s)
result["total"] = total
print(json.dumps(result))
"""


@pytest.fixture(scope="session")
def kit(tmp_path_factory):
    return session_kit(tmp_path_factory)


def run_sweep(kit, torn: bool, start: int, step: int) -> dict:
    from harness import run_micropython

    script = device_script(kit, ("v1", "v2", "v3"), _SWEEP % (start, step, torn))
    out = run_micropython(script, heapsize=SWEEP_HEAP, extra_paths=(kit.lib,), timeout=600)
    return json.loads(out.strip().splitlines()[-1])


def check(result: dict, every: bool) -> None:
    assert result["total"] > 50  # the scenario really spans many flash operations
    if every:
        assert result["points"] == result["total"]
    assert result["bricked"] == 0
    assert result["unverified"] == 0
    assert result["inconsistent"] == 0
    assert result["wrong_end"] == 0


@pytest.mark.parametrize("torn", [False, True], ids=["clean-cut", "torn-write"])
def test_power_cut_sampled(kit, torn):
    result = run_sweep(kit, torn, start=3 if torn else 0, step=9)
    check(result, every=False)
    assert result["resumed"] > 0  # some cuts fell inside a download, which then resumed


@pytest.mark.soak
@pytest.mark.parametrize("torn", [False, True], ids=["clean-cut", "torn-write"])
def test_power_cut_every_point(kit, torn):
    check(run_sweep(kit, torn, start=0, step=1), every=True)
