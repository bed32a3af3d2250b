"""Fixtures shared by every test: which interpreter runs the firmware code, and the import paths."""

import sys

import pytest
from harness import CPYTHON_RT, FIRMWARE_LIB, MICROPYTHON, MICROPYTHON_RT, MP_SUPPORT, RUNTIMES, TOOLS

# CPython-side tests import firmware modules and host tools directly.
for _p in (FIRMWARE_LIB, MP_SUPPORT, TOOLS):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


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
