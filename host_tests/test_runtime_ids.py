"""Tests say which runtime they ran on: the -v line of a test that ran firmware code on the
MicroPython unix port ends in [micropython]; a CPython-only test carries no tag (conftest.py)."""

import subprocess
import sys

import pytest
from harness import REPO


@pytest.mark.timeout(60)
def test_verbose_output_names_the_runtime():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-v",
            "-p",
            "no:cacheprovider",
            "host_tests/test_modem_power.py::test_power_up_never_pulses_a_modem_that_answers",
            "host_tests/test_modem_secrets.py::test_redact_keeps_the_command_name_only",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=50,
    ).stdout
    lines = {line.split(" ")[0].split("::")[-1]: line for line in out.splitlines() if "::" in line}
    assert "PASSED [micropython]" in lines["test_power_up_never_pulses_a_modem_that_answers"], out
    assert "[micropython]" not in lines["test_redact_keeps_the_command_name_only"], out
    assert "2 passed" in out
