"""Which tests must share a pytest-xdist worker: those of a module that builds its own expensive fixture.

A module defining a session- or module-scoped fixture (signed images, a booted unit, a hub with
devices) builds it once per worker that runs any of its tests. Spread over four workers, the slot
images of test_boot_trial.py were built four times. `make test` runs `--dist loadgroup`; this
scheduler keeps such a module's tests together and lets every other test go to any free worker.

Longest first: every run records how long each test took (pytest's cache, .pytest_cache) and the
next run hands out the longest work first (a module kept together counts as the sum of its tests),
so the run never ends with one worker busy on a 20 s test while the others idle. A test with no
record counts as the mean. Without a cache (a fresh checkout: CI) the order comes from
durations.json beside this file, the tests of 1 s or more as one run measured them (a test it does
not name counts as UNLISTED_S); it only orders the work, so a stale entry costs time, never a
result. Refresh it after a run with:
    python -c "import json; d = json.load(open('.pytest_cache/v/cellguard/durations')); json.dump({k: round(v, 1) for k, v in sorted(d.items()) if v >= 1}, open('host_tests/durations.json', 'w'), indent=0)"

Why not xdist_group marks: pytest 9 derives a node id from its path, so pytest-xdist 3.8.0's
loadgroup can no longer append the group to it (its marks have no effect). The scheduler decides from
the node id alone, in the controller, which collects nothing itself: a module is grouped when its
source defines such a fixture.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from functools import cache
from pathlib import Path

from xdist.scheduler import LoadScopeScheduling

DURATIONS_KEY = "cellguard/durations"  # {node id: seconds, setup + call + teardown} in pytest's cache
SEED = Path(__file__).with_name("durations.json")  # the slow tests' durations, for a run without a cache
UNLISTED_S = 0.2  # a test the seed does not name: under 1 s when the seed was made

_SHARED_FIXTURE = re.compile(r"@pytest\.fixture\(\s*scope=[\"'](session|module)[\"']")


@cache
def shares_a_fixture(path: str) -> bool:
    try:
        return bool(_SHARED_FIXTURE.search(Path(path).read_text()))
    except OSError:
        return False


def recorded_durations(cache_, seed: Path = SEED) -> tuple[dict[str, float], float]:
    """The durations to order by, and what a test they do not name weighs: the last run's (the mean),
    else the seed's (UNLISTED_S), else none."""
    durations = (cache_.get(DURATIONS_KEY, None) or {}) if cache_ is not None else {}
    if durations:
        return durations, sum(durations.values()) / len(durations)
    try:
        return json.loads(seed.read_text()), UNLISTED_S
    except (OSError, ValueError):
        return {}, UNLISTED_S


class SharedFixtureScheduling(LoadScopeScheduling):
    """LoadScope where a test's scope is its module if the module shares a fixture, else the test."""

    def __init__(self, config, log=None):
        super().__init__(config, log)
        self._rootdir = Path(str(config.rootpath))
        self._durations, self._unknown = recorded_durations(getattr(config, "cache", None))
        self._ordered = False

    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.split("::", 1)[0]
        return module if shares_a_fixture(str(self._rootdir / module)) else nodeid

    def _assign_work_unit(self, node) -> None:
        if not self._ordered:  # the first assignment: the queue is complete, nothing handed out yet
            self._ordered = True
            self._longest_first()
        super()._assign_work_unit(node)

    def _longest_first(self) -> None:
        if not self._durations:
            return

        def cost(unit: tuple[str, dict[str, bool]]) -> float:
            return sum(self._durations.get(nodeid, self._unknown) for nodeid in unit[1])

        units = sorted(self.workqueue.items(), key=cost, reverse=True)  # stable: ties keep xdist's order
        self.workqueue.clear()
        self.workqueue.update(units)


class DurationRecorder:
    """In the controller: adds up each test's phases (workers' reports included) and merges them into
    the cache at the end, for the next run's order. Tests not run this time keep their record."""

    def __init__(self, config):
        self.config = config
        self.durations: dict[str, float] = defaultdict(float)

    def pytest_runtest_logreport(self, report) -> None:
        self.durations[report.nodeid] += report.duration

    def pytest_sessionfinish(self) -> None:
        cache_ = getattr(self.config, "cache", None)
        if cache_ is None or not self.durations:
            return
        merged = cache_.get(DURATIONS_KEY, None) or {}
        merged.update({nodeid: round(seconds, 3) for nodeid, seconds in self.durations.items()})
        cache_.set(DURATIONS_KEY, merged)
