"""Power-loss proof of the boot part: a cut before every flash program/erase of an upgrade (download,
mark for test, trial boot, confirm) followed by a bad update's download, trial boots and revert;
then the same with torn writes. After each cut the device reboots and must run a verified image, with
a consistent state and a bootable slot, and the scenario must still end where it should.

Then flash that decays between power cuts, at the end of that life: a flipped bit at every point of
each slot file, of either state record or both, and of the failure journal; a weak cell and a read
error (EIO, once or for ever) under the confirmed image. The image that failed its trial must never
run as the confirmed one, the floor must never rise, and the unit must end on the confirmed image
(or, when the fault took that away for good, on the failed one in rescue)."""

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


_RETENTION = """
r = bootsim.retention_sweep(keys, imgs, %d, %d)
print(json.dumps(r))
"""
# (stride in a slot file, stride in the state files): every point under `make soak`, a sample here.
RETENTION_SAMPLE = (211, 11)
RETENTION_EVERY = (1, 1)


def run_retention(kit, strides: tuple[int, int]) -> dict:
    from harness import run_micropython

    script = device_script(kit, ("v1", "v2", "v3"), _RETENTION % strides)
    out = run_micropython(script, heapsize=SWEEP_HEAP, extra_paths=(kit.lib,), timeout=3600)
    return json.loads(out.strip().splitlines()[-1])


def check_retention(result: dict) -> None:
    assert result["points"] > 0
    for key in ("bricked", "unverified", "inconsistent", "adopted_reverted", "floor_raised_by_damage",
                "floor_lost", "wrong_end"):
        assert result[key] == 0, (key, result["examples"])


def test_retention_faults_sampled(kit):
    check_retention(run_retention(kit, RETENTION_SAMPLE))


@pytest.mark.soak
@pytest.mark.timeout(3600)  # about 11,000 points: 7 minutes on an idle core
def test_retention_faults_every_point(kit):
    check_retention(run_retention(kit, RETENTION_EVERY))
