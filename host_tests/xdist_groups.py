"""Which tests must share a pytest-xdist worker: those of a module that builds its own expensive fixture.

A module defining a session- or module-scoped fixture (signed images, a booted unit, a hub with
devices) builds it once per worker that runs any of its tests. Spread over four workers, the slot
images of test_boot_trial.py were built four times. `make test` runs `--dist loadgroup`; this
scheduler keeps such a module's tests together and lets every other test go to any free worker.

Why not xdist_group marks: pytest 9 derives a node id from its path, so pytest-xdist 3.8.0's
loadgroup can no longer append the group to it (its marks have no effect). The scheduler decides from
the node id alone, in the controller, which collects nothing itself: a module is grouped when its
source defines such a fixture.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from xdist.scheduler import LoadScopeScheduling

_SHARED_FIXTURE = re.compile(r"@pytest\.fixture\(\s*scope=[\"'](session|module)[\"']")


@cache
def shares_a_fixture(path: str) -> bool:
    try:
        return bool(_SHARED_FIXTURE.search(Path(path).read_text()))
    except OSError:
        return False


class SharedFixtureScheduling(LoadScopeScheduling):
    """LoadScope where a test's scope is its module if the module shares a fixture, else the test."""

    def __init__(self, config, log=None):
        super().__init__(config, log)
        self._rootdir = Path(str(config.rootpath))

    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.split("::", 1)[0]
        return module if shares_a_fixture(str(self._rootdir / module)) else nodeid
