"""Fixtures shared by every test: which interpreter runs the firmware code, and the import paths."""


import harness
import pytest
from harness import CPYTHON_RT, MICROPYTHON, MICROPYTHON_RT, RUNTIMES

# CPython-side tests import firmware modules (pyproject's pytest `pythonpath`) and the host packages
# (installed into .venv, editable) by name.


def pytest_report_header(config):
    return f"micropython: {MICROPYTHON}"


@pytest.fixture(params=RUNTIMES, ids=lambda rt: rt.name)
def runtime(request):
    """Parametrises a test over the MicroPython unix port and CPython; the test id names which."""
    return request.param


@pytest.fixture
def mp():
    """The real MicroPython unix port, with a microcontroller-sized heap."""
    return MICROPYTHON_RT


@pytest.fixture
def cpy():
    return CPYTHON_RT


# ---- which runtime a test ran on (issue 2: "tests say which runtime they ran on") -----------------
# The harness records every interpreter a test starts (harness.RAN); the -v line then reads
# "test_x[bg96] PASSED [micropython]". Tests parametrised with the `runtime` fixture already
# carry it in their id.
@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    harness.RAN.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and harness.RAN and "runtime" not in item.fixturenames:
        report.user_properties.append(("runtime", ",".join(sorted(harness.RAN))))


_LETTERS = {"passed": ".", "failed": "F", "skipped": "s"}


def pytest_report_teststatus(report, config):
    if report.when != "call" or hasattr(report, "wasxfail") or report.outcome not in _LETTERS:
        return None
    ran = dict(report.user_properties).get("runtime")
    if not ran:
        return None
    return report.outcome, _LETTERS[report.outcome], "%s [%s]" % (report.outcome.upper(), ran)


# ---- running in parallel (pytest-xdist, `make test` runs `-n 4 --dist loadgroup`) ---------------------
# A module whose tests share an expensive fixture it defines itself (a session or module scope: signed
# images, a booted unit) keeps its tests on one worker, so the fixture is built once, not once per
# worker. Every other test goes wherever a worker is free.
def pytest_collection_modifyitems(config, items):
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        module = getattr(item, "module", None)
        if info is None or module is None:
            continue
        for defs in info.name2fixturedefs.values():
            if any(d.scope in ("session", "module") and getattr(d.func, "__module__", None) == module.__name__
                   for d in defs):
                item.add_marker(pytest.mark.xdist_group(module.__name__))
                break
