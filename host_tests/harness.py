"""Run firmware code on the real MicroPython unix port, or on CPython, and return what it printed.

The same script can be handed to both runtimes (`Runtime.run`), which is how a test proves a firmware
module behaves the same on the interpreter a board runs and on CPython (where hypothesis and
`cryptography` live). Scripts see `firmware/lib` and `host_tests/mp_support` on their path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIRMWARE = REPO / "firmware"
FIRMWARE_LIB = FIRMWARE / "lib"
MP_SUPPORT = REPO / "host_tests" / "mp_support"
MICROPYTHON = Path(sys.executable).parent / "micropython"

# A microcontroller-sized heap: the RP2040 leaves about 190 KiB to MicroPython, an ESP32 without
# PSRAM a little more. Tests that need more say so.
DEFAULT_HEAP = "128K"


class RuntimeFailed(AssertionError):
    """The script exited non-zero; the message carries everything it printed."""


def script_path(extra_paths=()) -> list[str]:
    return [str(p) for p in (*extra_paths, FIRMWARE_LIB, MP_SUPPORT)]


# The runtimes the current test ran firmware code on (conftest clears it per test and shows it
# in the -v output, e.g. "PASSED [micropython]").
RAN: set[str] = set()


def micropython_cmd(heapsize: str = DEFAULT_HEAP) -> list[str]:
    RAN.add("micropython")
    return [str(MICROPYTHON), "-X", f"heapsize={heapsize}"]


def micropython_env(extra_paths=(), env: dict | None = None) -> dict:
    out = dict(os.environ if env is None else env)
    # ".frozen" keeps the port's frozen modules (asyncio) importable.
    out["MICROPYPATH"] = ":".join([".frozen", *script_path(extra_paths)])
    return out


def cpython_env(extra_paths=(), env: dict | None = None) -> dict:
    out = dict(os.environ if env is None else env)
    out["PYTHONPATH"] = ":".join(script_path(extra_paths))
    return out


def _run(name: str, interpreter: list[str], script: str, env: dict, timeout: float, args, cwd) -> str:
    proc = subprocess.run(
        [*interpreter, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeFailed(f"{name} exited {proc.returncode}:\n{proc.stdout}{proc.stderr or ''}")
    return proc.stdout


def run_micropython(
    script: str,
    *,
    heapsize: str = DEFAULT_HEAP,
    timeout: float = 60,
    args: tuple = (),
    cwd: str | Path | None = None,
    extra_paths=(),
    env: dict | None = None,
) -> str:
    """Run `script` (source text) on the unix port; return stdout, raise RuntimeFailed on failure."""
    return _run(
        "micropython", micropython_cmd(heapsize), script, micropython_env(extra_paths, env), timeout, args, cwd
    )


def run_cpython(
    script: str,
    *,
    timeout: float = 60,
    args: tuple = (),
    cwd: str | Path | None = None,
    extra_paths=(),
    env: dict | None = None,
    **_ignored,
) -> str:
    """The same for CPython (heapsize and other unix-port options are ignored)."""
    RAN.add("cpython")
    return _run("cpython", [sys.executable], script, cpython_env(extra_paths, env), timeout, args, cwd)


def spawn_micropython(
    script: str, *, heapsize: str = DEFAULT_HEAP, args: tuple = (), extra_paths=(), env=None, **popen
) -> subprocess.Popen:
    """Start a long-running script on the unix port (e.g. a driver talking to the emulated modem)."""
    return subprocess.Popen(
        [*micropython_cmd(heapsize), "-c", script, *map(str, args)],
        env=micropython_env(extra_paths, env),
        text=True,
        **popen,
    )


@dataclass(frozen=True)
class Runtime:
    """One of the two interpreters a test can run firmware code on."""

    name: str  # "micropython" or "cpython"

    def run(self, script: str, **kwargs) -> str:
        if self.name == "micropython":
            return run_micropython(script, **kwargs)
        return run_cpython(script, **kwargs)


MICROPYTHON_RT = Runtime("micropython")
CPYTHON_RT = Runtime("cpython")
RUNTIMES = (MICROPYTHON_RT, CPYTHON_RT)
