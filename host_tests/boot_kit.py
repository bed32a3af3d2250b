"""Test kit for the boot part: fresh keys, app folders, and imgtool-signed images, made in a tmp dir.

Keys are generated at test time (never committed). `make_kit(dir)` returns paths the tests hand to
MicroPython scripts (the trusted-key module goes on the script's path as `boot_trusted`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from cgdev import image as image_tool

TRUSTED = ("ed_a", "ed_b", "ec")  # built into the boot part under test: two Ed25519 (rotation), one P-256
KEY_TYPES = {"ed_a": "ed25519", "ed_b": "ed25519", "ec": "ecdsa-p256", "rogue": "ed25519"}

# name -> (version, signing key, healthy, padding bytes): the app's appmain.py says what it is.
IMAGES = {
    "v1": ("1.0.0", "ed_a", True, 2048),
    "v2": ("1.1.0", "ed_b", True, 2048),
    "v3": ("1.2.0", "ed_a", False, 2048),
    "v2_ec": ("1.1.0", "ec", True, 2048),
    "rogue": ("1.1.0", "rogue", True, 2048),
    "old": ("0.9.0", "ed_a", True, 2048),
    "big64k": ("1.3.0", "ed_a", True, 64 * 1024),
    "big64k_next": ("1.4.0", "ed_a", True, 64 * 1024),  # an update of big64k (the OTA heap test)
}


@dataclass
class Kit:
    root: Path
    keys: dict[str, Path] = field(default_factory=dict)
    images: dict[str, Path] = field(default_factory=dict)

    @property
    def lib(self) -> Path:
        """Folder with boot_trusted.py: add it to a MicroPython script's extra_paths."""
        return self.root / "lib"


def app_source(version: str, healthy: bool) -> str:
    return f"VERSION = {version!r}\nHEALTHY = {healthy!r}\n"


def make_app(folder: Path, version: str, healthy: bool, padding: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "appmain.py").write_text(app_source(version, healthy))
    if padding:
        # Incompressible filler so an image spans several chunks and flash blocks.
        (folder / "blob.bin").write_bytes(random.Random(version).randbytes(padding))
    return folder


def make_kit(root: Path, only: tuple[str, ...] | None = None) -> Kit:
    kit = Kit(root)
    for name, key_type in KEY_TYPES.items():
        kit.keys[name] = image_tool.keygen(root / "keys" / f"{name}.pem", key_type)
    kit.lib.mkdir(parents=True, exist_ok=True)
    (kit.lib / "boot_trusted.py").write_text(image_tool.trusted_module([kit.keys[k] for k in TRUSTED]))
    for name, (version, key, healthy, padding) in IMAGES.items():
        if only is not None and name not in only:
            continue
        app = make_app(root / "apps" / name, version, healthy, padding)
        payload = image_tool.build(app, root / "build" / f"{name}.romfs")
        kit.images[name] = image_tool.sign(kit.keys[key], payload, root / "build" / f"{name}.img", version)
    return kit


_session: dict[str, Kit] = {}


def session_kit(tmp_path_factory) -> Kit:
    """One kit per test session (keys and images take a few seconds to make)."""
    if "kit" not in _session:
        _session["kit"] = make_kit(tmp_path_factory.mktemp("bootkit"))
    return _session["kit"]


def device_script(kit: Kit, names: tuple[str, ...], body: str) -> str:
    """A MicroPython script prologue: trusted keys and the named images loaded, then `body`."""
    paths = {n: str(kit.images[n]) for n in names}
    return (
        "import json\n"
        "from cgboot import image\n"
        "import boot_trusted, bootsim\n"
        "keys = image.trusted(boot_trusted.KEYS)\n"
        f"paths = {paths!r}\n"
        "imgs = {}\n"
        "for n in paths:\n"
        "    with open(paths[n], 'rb') as f:\n"
        "        imgs[n] = f.read()\n"
    ) + body
