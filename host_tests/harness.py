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


# The unix port has a native emitter; many builds (CircuitPython's default ones) have none, and there
# cellguard._fastxor does not compile. This line first makes the unix port behave like such a build
# (mp_support/no_native_emitter.py), so the code only those builds run is run by a MicroPython VM.
NO_NATIVE_PRELUDE = "import no_native_emitter\n"


@dataclass(frozen=True)
class Runtime:
    """An interpreter a test can run firmware code on."""

    name: str  # "micropython", "micropython-nonative" or "cpython"

    def run(self, script: str, **kwargs) -> str:
        if self.name == "cpython":
            return run_cpython(script, **kwargs)
        if self.name == "micropython-nonative":
            RAN.add(self.name)
            script = NO_NATIVE_PRELUDE + script
        return run_micropython(script, **kwargs)


MICROPYTHON_RT = Runtime("micropython")
NO_NATIVE_RT = Runtime("micropython-nonative")  # the unix port as a build without native code
CPYTHON_RT = Runtime("cpython")
RUNTIMES = (MICROPYTHON_RT, CPYTHON_RT)
# Firmware with a native (viper) path and a plain one: both on the unix port, and CPython.
NATIVE_AND_PLAIN = (MICROPYTHON_RT, NO_NATIVE_RT, CPYTHON_RT)
