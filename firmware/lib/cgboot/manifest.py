# CircuitPython's stand-in for the verified ROMFS image: a signed list of the application's files,
# checked in boot.py before anything imports them (docs/runtimes.md, "verified application image").
#
# CircuitPython has no vfs.VfsRom, so the application cannot run from the bytes whose signature was
# checked. Instead tools/flash.py writes /manifest.img: an MCUboot image (signed by imgtool, with the
# same key as a MicroPython unit's slot image) whose body lists "<sha256 hex> <path>" a line, paths
# relative to the filesystem root. boot_device() verifies its signature with cgboot.image against
# the boot part's trusted keys, then hashes every listed file; a missing or changed file, or a
# manifest that does not verify, is refused. Only cgboot modules are imported here: the checked
# files (cellguard among them) are not imported until they have been checked.

MANIFEST = "manifest.img"
EXIT_REFUSED = 78  # a host (the tests) ends the process with this status instead of halting
# CircuitPython runs the first of code.txt, code.py, main.py, main.txt: the first two would run
# instead of the checked main.py, unverified (tools/flash.py removes them; a unit that has one is
# refused, since nothing put it there through flash.py).
SHADOWS_MAIN = ("code.txt", "code.py")
# What this boot decided, for the status page (cellguard.cpy_boot.publish_manifest_result):
# ("verified", version, file count) or ("unverified", reason); None before boot.py ran.
RESULT = None


class ImageMismatch(Exception):
    """A file of the application is missing or differs from the signed manifest."""


class NoManifest(Exception):
    """There is no /manifest.img (a unit flashed without one: development only)."""


def _join(root, rel):
    return root + rel if root.endswith("/") else root + "/" + rel


def _sha256():
    # MicroPython: hashlib.sha256. CircuitPython: hashlib.new("sha256") only, and on ports without a
    # hashlib the bundled, pinned adafruit_hashlib (slow, pure Python).
    try:
        import hashlib
    except ImportError:
        import adafruit_hashlib as hashlib
    make = getattr(hashlib, "sha256", None)
    return make() if make is not None else hashlib.new("sha256")


def parse(body):
    """[(path, sha256 hex)] from a manifest body; ValueError for a line that is not one."""
    entries = []
    for line in bytes(body).decode().split("\n"):
        if not line:
            continue
        digest, _, rel = line.partition(" ")
        if len(digest) != 64 or not rel or rel.startswith("/") or ".." in rel.split("/"):
            raise ValueError("bad manifest line %r" % line[:80])
        entries.append((rel, digest))
    return entries


def verify_files(entries, root="/"):
    """Hash each listed file; raise ImageMismatch naming the first one missing or different.

    entries: (path relative to root, SHA-256 hex) pairs from a manifest whose signature the caller
    has already checked (load() does both).
    """
    buf = bytearray(512)
    view = memoryview(buf)
    for rel, digest in entries:
        h = _sha256()
        try:
            with open(_join(root, rel), "rb") as f:
                while True:
                    n = f.readinto(buf)
                    if not n:
                        break
                    h.update(view[:n])
        except OSError:
            raise ImageMismatch("missing: " + rel)
        if h.digest().hex() != digest:
            raise ImageMismatch("differs: " + rel)


def load(root, trusted_keys):
    """The entries of root/manifest.img after its signature checks (cgboot.image.Rejected if not)."""
    from cgboot import image  # here, not at the top: cellguard.cpy_boot imports verify_files alone

    try:
        with open(_join(root, MANIFEST), "rb") as f:
            buf = f.read()
    except OSError:
        raise NoManifest("no /%s" % MANIFEST)
    info = image.verify(buf, trusted_keys)
    try:
        return parse(info.body(buf)), info
    except (ValueError, UnicodeError) as e:
        raise image.Rejected(image.MALFORMED, str(e))


def default_root():
    from cgboot import host

    return host.fs_root()


def boot_device(root=None):
    """What firmware/boot.py runs on CircuitPython: returns (file count, version string) when every
    file checks; raises NoManifest, cgboot.image.Rejected or ImageMismatch otherwise."""
    from cgboot import image, trusted_keys

    global RESULT
    root = root or default_root()
    entries, info = load(root, image.trusted(trusted_keys.KEYS))
    verify_files(entries, root)
    check_not_shadowed(root)
    RESULT = ("verified", info.version_str(), len(entries))
    return len(entries), info.version_str()


def check_not_shadowed(root):
    """ImageMismatch if a start-up file CircuitPython prefers over main.py exists (it is unsigned)."""
    import os

    for name in SHADOWS_MAIN:
        try:
            os.stat(_join(root, name))
        except OSError:
            continue
        raise ImageMismatch("unsigned %s would run instead of main.py" % name)


def refuse(reason):
    """Stop here: nothing unverified may run. A board halts in boot.py (CircuitPython's safe mode,
    entered with the reset button, skips boot.py so the unit can be re-flashed); a host exits."""
    print("cgboot: REFUSING TO RUN: %s" % reason)
    print("cgboot: the application does not match its signed manifest; re-flash the unit")
    from cgboot import host

    if host.HOST:
        raise SystemExit(EXIT_REFUSED)
    import time

    while True:
        time.sleep(1)
