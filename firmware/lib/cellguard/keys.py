# The device's identity and root key, kept under runtime.fs_root()/keys/, and the keys derived
# from it (docs/protocol.md section 3). The root key is 32 random bytes written at production
# (`provision`; staged as root.next right before the SIM's PIN changes to it); nothing else is ever
# stored: every working key is derived when needed with HKDF-SHA-256, each with its own label. `wipe()` (decommission) destroys the root key and the
# message state, after which the device can neither send nor accept anything.
from cellguard import atomic, crypto, runtime

SALT = b"cellguard/v1"
ROOT_LEN = 32


class KeyError_(Exception):
    pass


class NotProvisioned(KeyError_):
    """No root key on this device (never provisioned, or wiped)."""


def _dir():
    return runtime.path_join(runtime.fs_root(), "keys")


def _root_path():
    return runtime.path_join(_dir(), "root")


def _ident_path():
    return runtime.path_join(_dir(), "identity")


def _staged_path():
    return runtime.path_join(_dir(), "root.next")


_cache = None  # (root, device_id, key_id)


def provision(root_key, device_id, key_id):
    """Production: store the root key and identity, and start the message state afresh."""
    global _cache
    if len(root_key) != ROOT_LEN:
        raise ValueError("root key must be 32 bytes")
    if not 0 <= key_id < (1 << 32):
        raise ValueError("key id out of range")
    atomic.ensure_dir(_dir())
    atomic.write_atomic(_root_path(), bytes(root_key))
    atomic.write_atomic(_ident_path(), ("%s\n%d\n" % (device_id, key_id)).encode())
    state = runtime.path_join(runtime.fs_root(), "state")
    atomic.ensure_dir(state)
    # A new key starts both sequence spaces at 0 (protocol.md section 9, key rotation).
    for name in atomic.listdir(state):
        if name.startswith("msg"):
            atomic.remove(runtime.path_join(state, name))
    atomic.write_atomic(runtime.path_join(state, "msg_seq"), b"0")
    _cache = None


def _load():
    global _cache
    if _cache is None:
        root = stored_root()
        if root is None:
            raise NotProvisioned("root key missing or wiped")
        try:
            ident = atomic.read_bytes(_ident_path()).decode().split("\n")
        except OSError:
            raise NotProvisioned("no identity")
        _cache = (root, ident[0], int(ident[1]))
    return _cache


def stored_root():
    """The root key on the flash, with or without its identity (provisioning writes the key first:
    a power cut between the two leaves the key alone), or None."""
    try:
        root = atomic.read_bytes(_root_path())
    except OSError:
        return None
    if len(root) != ROOT_LEN or root == bytes(ROOT_LEN):
        return None
    return root


def stage_root(root_key):
    """Provisioning, right before the SIM's PIN changes to this key's: a power cut between that
    change and provision() leaves the key here, so the re-run can still give the SIM its PIN."""
    atomic.ensure_dir(_dir())
    atomic.write_atomic(_staged_path(), bytes(root_key))


def staged_root():
    """The key stage_root() left (a run cut at its PIN change), or None."""
    try:
        root = atomic.read_bytes(_staged_path())
    except OSError:
        return None
    return root if len(root) == ROOT_LEN and root != bytes(ROOT_LEN) else None


def unstage():
    path = _staged_path()
    if atomic.exists(path):
        with open(path, "wb") as f:  # as wipe(): overwrite in place first
            f.write(bytes(ROOT_LEN))
        atomic.remove(path)


def provisioned():
    try:
        _load()
        return True
    except NotProvisioned:
        return False


def device_id():
    return _load()[1]


def key_id():
    return _load()[2]


def derive(label, length):
    """HKDF-SHA-256(root key, salt "cellguard/v1", info = label) -> `length` bytes."""
    return crypto.hkdf(_load()[0], SALT, label, length)


def wipe():
    """Decommission: overwrite and delete the root key, forget the identity and message state."""
    global _cache
    _cache = None
    unstage()
    path = _root_path()
    if atomic.exists(path):
        with open(path, "wb") as f:  # overwrite in place first: rename alone may leave the old block
            f.write(bytes(ROOT_LEN))
        atomic.remove(path)
    atomic.remove(_ident_path())
    state = runtime.path_join(runtime.fs_root(), "state")
    for name in atomic.listdir(state):
        if name.startswith("msg"):
            atomic.remove(runtime.path_join(state, name))
