"""Build, sign, verify and inspect cellguard application images (MCUboot format, imgtool-signed).

    cellguard image build APP_DIR -o app.romfs          # app folder -> ROMFS payload (mpremote)
    cellguard image sign -k key.pem -v 1.2.3 app.romfs app.img   # imgtool sign (Ed25519/P-256)
    cellguard image verify -k key.pem app.img            # imgtool verify + the device's verifier
    cellguard image info app.img [--json]                # header, TLVs, version, counter
    cellguard image keygen -t ed25519 -o key.pem         # imgtool keygen (tests, dev keys)
    cellguard image trust a.pem b.pem -o trusted_keys.py # the boot part's trusted-key module
    cellguard image release -k key.pem -v 1.2.3 -o app.img  # firmware/lib minus cgboot + device libs, signed
    cellguard image install --fs DIR app.img [-k key.pem]   # factory: put it in slot a of DIR

Signing is imgtool's job: this tool only calls its command line (docs/image-format.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # host/<package>/<module>.py
FIRMWARE_LIB = REPO / "firmware" / "lib"
DEFAULT_SLOT_SIZE = 128 * 1024  # keep equal to cgboot.slots.DEFAULT_SLOT_SIZE
HEADER_SIZE = 32
log = logging.getLogger("image")


class ImageToolError(RuntimeError):
    """An external tool (imgtool, mpremote) failed; the message carries its output."""


def _tool(name: str) -> list[str]:
    # Prefer the tool installed beside this interpreter (the project's .venv).
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return [str(beside)]
    found = shutil.which(name)
    if not found:
        raise ImageToolError(f"{name} not found: run `make venv` (it is pinned in requirements-dev.txt)")
    return [found]


def _run(cmd: list[str]) -> str:
    log.debug("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageToolError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def build(app_dir: Path, out: Path, compile_mpy: bool = True) -> Path:
    """Pack `app_dir` as a ROMFS image (what vfs.VfsRom mounts); mpremote compiles .py to .mpy
    unless compile_mpy is False (the folder was precompiled, see precompile())."""
    if not app_dir.is_dir():
        raise ImageToolError(f"{app_dir} is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    mpy = "--mpy" if compile_mpy else "--no-mpy"
    _run([*_tool("mpremote"), "romfs", mpy, "-o", str(out), "build", str(app_dir)])
    return out


def precompile(app_dir: Path, march: str | None = None) -> list[Path]:
    """Compile every .py under `app_dir` to .mpy in place (and drop the .py).

    Modules with native/viper code need the board's architecture (`march`, e.g. armv6m, xtensawin,
    x64 for the unix port); without it they stay as source and the board compiles them at import.
    Returns the files kept as source.
    """
    from cgdev.bundle import mpy_cross_command

    kept = []
    arch = [f"-march={march}"] if march else []
    tool = mpy_cross_command()
    for src in sorted(app_dir.rglob("*.py")):
        cmd = [*tool, *arch, "-o", str(src.with_suffix(".mpy")), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            src.unlink()
            continue
        kept.append(src)
        # mpy-cross prints a traceback; one line says what it means ("invalid arch": native code
        # and no -march given, which is expected: the board compiles that module when it imports it).
        last = (proc.stderr.strip().splitlines() or ["mpy-cross failed"])[-1]
        if "invalid arch" in last:
            log.info("%s kept as source: it has native code and no -march was given; the board compiles it at "
                     "import", src.relative_to(app_dir))
        else:
            log.warning("%s kept as source: mpy-cross says %s", src.relative_to(app_dir), last)
    return kept


def sign(
    key: Path,
    payload: Path,
    out: Path,
    version: str,
    security_counter: str = "auto",
    slot_size: int = DEFAULT_SLOT_SIZE,
) -> Path:
    """Wrap `payload` in an MCUboot header + TLVs and sign it with imgtool."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _run(
        [
            *_tool("imgtool"),
            "sign",
            "-k", str(key),
            "-H", str(HEADER_SIZE),
            "--pad-header",
            "-v", version,
            "-s", str(security_counter),
            "-S", str(slot_size),
            str(payload),
            str(out),
        ]
    )  # fmt: skip
    return out


def stage_application(
    out_dir: Path, lib: Path = FIRMWARE_LIB, extra: list[Path] | None = None, device_libs: str | None = "micropython"
) -> Path:
    """Copy the application (firmware/lib without the trusted boot part) into `out_dir`, with the
    pinned device libraries for runtime `device_libs` beside it (None: without them)."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(lib, out_dir, ignore=shutil.ignore_patterns("cgboot", "__pycache__", "*.pyc"))
    if device_libs:
        stage_device_libs(out_dir, device_libs)
    for path in extra or []:
        shutil.copy(path, out_dir / path.name)
    return out_dir


def stage_device_libs(app_dir: Path, runtime: str = "micropython") -> list[dict]:
    """The pinned Adafruit libraries (cellguard bundle) at the top of `app_dir`, which is first
    on the device's sys.path once mounted: `import adafruit_sht4x` finds them in the verified image."""
    import tempfile

    from cgdev import bundle as bundle_libs

    with tempfile.TemporaryDirectory() as tmp:
        lib = Path(tmp) / "lib"
        try:
            manifest = bundle_libs.bundle(lib, bundle_libs.read_names(bundle_libs.DEVICE_LIBS, runtime),
                                          bundle_libs.read_pins(bundle_libs.REQUIREMENTS))
        except bundle_libs.BundleError as e:
            raise ImageToolError(f"device libraries: {e}") from e
        shutil.copytree(lib, app_dir, dirs_exist_ok=True)
    return manifest


def release(
    key: Path,
    version: str,
    out: Path,
    extra: list[Path] | None = None,
    march: str | None = None,
    slot_size: int = DEFAULT_SLOT_SIZE,
) -> Path:
    """The whole application as one signed image: stage (with the pinned device libraries),
    precompile, build the ROMFS, sign for a slot of `slot_size` bytes (the board profile's; imgtool
    refuses an image that does not fit)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        app = stage_application(Path(tmp) / "app", extra=extra)
        precompile(app, march)
        payload = build(app, Path(tmp) / "app.romfs", compile_mpy=False)
        return sign(key, payload, out, version, slot_size=slot_size)


def install(img: Path, fs: Path) -> Path:
    """Factory provisioning into a device folder: slot a holds `img`, no boot state, provision record
    or failure journal (the first boot adopts the slot as confirmed, after verifying it, and writes
    the provision record)."""
    (fs / "slots").mkdir(parents=True, exist_ok=True)
    target = fs / "slots" / "a.img"
    shutil.copy(img, target)
    for name in ("b.img",):
        (fs / "slots" / name).unlink(missing_ok=True)
    for name in ("boot.0", "boot.1", "provision", "failed"):
        (fs / "state" / name).unlink(missing_ok=True)
    return target


def imgtool_verify(key: Path, img: Path) -> str:
    return _run([*_tool("imgtool"), "verify", "-k", str(key), str(img)])


def keygen(out: Path, key_type: str = "ed25519") -> Path:
    """A new key at `out`, unless another process made one there first (then that one is kept):
    two flashes starting at once must not sign with two different keys, or read a half-written one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        _run([*_tool("imgtool"), "keygen", "-k", str(tmp), "-t", key_type])
        try:
            os.link(tmp, out)  # atomic, and fails if the key exists
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    return out


def public_key(pem: Path) -> tuple[str, bytes]:
    """(algorithm, raw public bytes) of a PEM key (private or public), as cgboot.image.TrustedKey wants."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    data = pem.read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=None).public_key()
    except ValueError:
        key = serialization.load_pem_public_key(data)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519", key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
        raw = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        return "ecdsa-p256", raw
    raise ImageToolError(f"{pem}: only Ed25519 and ECDSA P-256 keys are supported")


def trusted_module(pems: list[Path]) -> str:
    """Source of a cgboot trusted-key module (public keys only) for the given key files."""
    lines = [
        "# Generated by `cellguard image trust`: the public keys this boot part accepts.",
        "# Two or more, so a signing key can be rotated (sign with the new key, then retire the old).",
        "KEYS = (",
    ]
    from cgboot.image import TrustedKey

    for pem in pems:
        alg, raw = public_key(pem)
        try:
            TrustedKey(alg, raw)  # the device's own checks: a small-order Ed25519 key is refused
        except ValueError as e:
            raise ImageToolError(f"{pem}: {e}") from None
        lines.append(f"    ({alg!r}, bytes.fromhex({raw.hex()!r}), {pem.stem!r}),")
    lines.append(")")
    return "\n".join(lines) + "\n"


def device_verify(img: Path, pems: list[Path], min_counter: int = 0):
    """Run the device's own verifier (cgboot.image, under CPython) on `img`."""
    from cgboot import image  # the device's verifier, unchanged under CPython (packaged with the host tools)

    keys = [image.TrustedKey(*public_key(p), p.stem) for p in pems]
    return image.verify(img.read_bytes(), keys, min_counter=min_counter)


def info(img: Path) -> dict:
    """Header fields and TLVs of `img` (structure only; nothing is verified)."""
    import struct

    from cgboot import image

    buf = img.read_bytes()
    hdr_size, img_size, version, prot_end, tlvs = image.parse(buf)
    _magic, load, _h, prot_size, _i, flags = struct.unpack_from("<IIHHII", buf, 0)
    out: dict = {
        "file_size": len(buf),
        "hdr_size": hdr_size,
        "img_size": img_size,
        "protected_tlv_size": prot_size,
        "load_addr": load,
        "flags": flags,
        "version": "%d.%d.%d+%d" % version,
        "security_counter": 0,
        "tlvs": {},
    }
    names = {0x01: "KEYHASH", 0x10: "SHA256", 0x22: "ECDSA_SIG", 0x24: "ED25519", 0x50: "SEC_CNT"}
    for tlv_type, (off, n) in sorted(tlvs.items()):
        out["tlvs"][names.get(tlv_type, hex(tlv_type))] = buf[off : off + n].hex()
    if image.TLV_SEC_CNT in tlvs:
        out["security_counter"] = struct.unpack_from("<I", buf, tlvs[image.TLV_SEC_CNT][0])[0]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-q", "--quiet", action="store_true")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("build", help="app folder -> ROMFS payload")
    p.add_argument("app_dir", type=Path)
    p.add_argument("-o", "--out", type=Path, required=True)

    p = sub.add_parser("sign", help="payload -> signed MCUboot image (imgtool)")
    p.add_argument("-k", "--key", type=Path, required=True)
    p.add_argument("-v", "--version", required=True, help="major.minor.revision[+build]")
    p.add_argument("-s", "--security-counter", default="auto", help="'auto' (from the version) or a number")
    p.add_argument("-S", "--slot-size", type=int, default=DEFAULT_SLOT_SIZE)
    p.add_argument("payload", type=Path)
    p.add_argument("out", type=Path)

    p = sub.add_parser("verify", help="imgtool verify, then the device's verifier")
    p.add_argument("-k", "--key", type=Path, action="append", required=True)
    p.add_argument("--min-counter", type=int, default=0)
    p.add_argument("img", type=Path)

    p = sub.add_parser("info", help="print header and TLVs")
    p.add_argument("img", type=Path)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("keygen", help="new signing key (imgtool keygen)")
    p.add_argument("-t", "--type", choices=("ed25519", "ecdsa-p256"), default="ed25519")
    p.add_argument("-o", "--out", type=Path, required=True)

    p = sub.add_parser("trust", help="write the boot part's trusted-key module")
    p.add_argument("keys", type=Path, nargs="+")
    p.add_argument("-o", "--out", type=Path, required=True)

    p = sub.add_parser("release", help="firmware/lib (without cgboot) -> one signed image")
    p.add_argument("-k", "--key", type=Path, required=True)
    p.add_argument("-v", "--version", required=True)
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument(
        "--add", type=Path, action="append", default=[], help="extra top-level file (e.g. app_main.py)"
    )
    p.add_argument("--march", help="the board's mpy-cross -march (armv6m, xtensawin, x64...) for native code")
    p.add_argument("-S", "--slot-size", type=int, default=DEFAULT_SLOT_SIZE, help="the board profile's slot_size")

    p = sub.add_parser("install", help="factory provisioning: image into slot a of a device folder")
    p.add_argument("--fs", type=Path, required=True)
    p.add_argument("-k", "--key", type=Path, action="append", default=[], help="verify with these keys first")
    p.add_argument("img", type=Path)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        if args.cmd == "build":
            build(args.app_dir, args.out)
            log.info("built %s (%d bytes)", args.out, args.out.stat().st_size)
        elif args.cmd == "sign":
            sign(args.key, args.payload, args.out, args.version, args.security_counter, args.slot_size)
            log.info("signed %s", args.out)
        elif args.cmd == "verify":
            for key in args.key:
                imgtool_verify(key, args.img)
            from cgboot.image import Rejected

            try:
                found = device_verify(args.img, args.key, args.min_counter)
            except Rejected as e:
                log.error("device verifier rejects %s: %s", args.img, e)
                return 1
            log.info("ok: %s version %s counter %d key %s", args.img, found.version_str(),
                     found.security_counter, found.key.name)  # fmt: skip
        elif args.cmd == "info":
            from cgboot.image import Rejected

            try:
                data = info(args.img)
            except Rejected as e:
                log.error("%s is not an image this tool can read: %s", args.img, e)
                return 1
            if args.json:
                print(json.dumps(data, indent=2))
            else:
                for k, v in data.items():
                    if k != "tlvs":
                        print(f"{k:20} {v}")
                for k, v in data["tlvs"].items():
                    print(f"TLV {k:16} {v}")
        elif args.cmd == "keygen":
            keygen(args.out, args.type)
            log.info("wrote %s (keep it secret; never commit it)", args.out)
        elif args.cmd == "release":
            release(args.key, args.version, args.out, args.add, args.march, args.slot_size)
            log.info("released %s (%d bytes)", args.out, args.out.stat().st_size)
        elif args.cmd == "install":
            if args.key:
                from cgboot.image import Rejected

                try:
                    device_verify(args.img, args.key)
                except Rejected as e:
                    log.error("refusing to install %s: %s", args.img, e)
                    return 1
            log.info("installed %s", install(args.img, args.fs))
        elif args.cmd == "trust":
            if len(args.keys) < 2:
                log.warning("only one trusted key: rotation needs at least two")
            args.out.write_text(trusted_module(args.keys))
            log.info("wrote %s", args.out)
    except ImageToolError as e:
        log.error("%s", e)
        return 1
    except OSError as e:  # a missing or unreadable file: say which, no traceback
        log.error("%s: %s", e.filename or args.cmd, e.strerror or e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
