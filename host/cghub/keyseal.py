"""Root keys sealed at rest: the store holds each device's root key only wrapped under a key-encryption
key (KEK) that lives outside the database, so a copy of the database alone yields no key.

A wrapped key is one blob:

    b"CGW1" | KEK id (8 bytes) | nonce (12 bytes) | AES-256-GCM(root key) with its 16-byte tag

The associated data is the key id (8 bytes, big endian): a blob moved to another row does not open.
The KEK id (the first 8 bytes of SHA-256 over b"cellguard kek id" and the KEK) names which KEK
wrapped a blob, so during a rotation a hub given both reads blobs under the old and the new KEK
alike, and `rotate-kek` rewraps, row by row, whatever is not yet under the new one: no downtime, as
long as every hub holds both KEKs before the first row is rewrapped (docs/hub.md section 5). A hub
holds the KEKs it was started with; a blob under any other is refused (KeyNotAtHand).

Where the KEK comes from, first match wins (`keyring_from`); the old ones (read, never used to wrap)
come from every source given:
    --kek-file PATH / --old-kek-file PATH       (the command line)
    $CELLGUARD_HUB_KEK / $CELLGUARD_HUB_KEK_OLD  (64 hex digits)
    $CELLGUARD_HUB_KEK_FILE / $CELLGUARD_HUB_KEK_OLD_FILE  (a file path)
    hub.kek beside a SQLite database              (the developer's bench: `make flash` creates it)
    --pkcs11-lib/--pkcs11-token/--pkcs11-key     (an AES key on a PKCS#11 token; `pip install .[pkcs11]`)
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"CGW1"
_ID_LEN = 8
_NONCE_LEN = 12
BLOB_LEN = len(MAGIC) + _ID_LEN + _NONCE_LEN + 32 + 16
ENV_KEK = "CELLGUARD_HUB_KEK"
ENV_KEK_OLD = "CELLGUARD_HUB_KEK_OLD"
ENV_KEK_FILE = "CELLGUARD_HUB_KEK_FILE"
ENV_KEK_OLD_FILE = "CELLGUARD_HUB_KEK_OLD_FILE"
DEV_KEK_NAME = "hub.kek"


class KekError(Exception):
    """No KEK where one is needed, or a blob that no KEK at hand opens."""


class KeyNotAtHand(KekError):
    """A blob sealed under a KEK this process was not given: e.g. rewrapped by `rotate-kek` under a
    new KEK that a running hub was not restarted with. Not an altered blob: the right KEK opens it."""


def _aad(key_id: int) -> bytes:
    return b"cellguard root key" + key_id.to_bytes(8, "big", signed=True)


def is_wrapped(blob: bytes) -> bool:
    return len(blob) == BLOB_LEN and blob[:4] == MAGIC


def kek_id_of(blob: bytes) -> bytes:
    return bytes(blob[4 : 4 + _ID_LEN])


class Kek:
    """One KEK held in this process's memory (from a file or the environment)."""

    def __init__(self, key: bytes, source: str = "memory"):
        if len(key) != 32:
            raise KekError(f"a KEK is 32 bytes (64 hex digits); {source} holds {len(key)}")
        self._aead = AESGCM(key)
        self.id = hashlib.sha256(b"cellguard kek id" + key).digest()[:_ID_LEN]
        self.source = source

    def wrap(self, key_id: int, root: bytes) -> bytes:
        nonce = secrets.token_bytes(_NONCE_LEN)  # random: a KEK wraps far fewer than 2^32 keys
        return MAGIC + self.id + nonce + self._aead.encrypt(nonce, bytes(root), _aad(key_id))

    def unwrap(self, key_id: int, blob: bytes) -> bytes:
        n = len(MAGIC) + _ID_LEN
        return self._aead.decrypt(blob[n : n + _NONCE_LEN], blob[n + _NONCE_LEN :], _aad(key_id))


class Pkcs11Kek:
    """A KEK that never leaves a PKCS#11 token (an HSM; SoftHSM2 in tests): the token runs AES-GCM.

    The blob format is the same; the nonce is made here and handed to the token, as python-pkcs11's
    AES_GCM mechanism takes it (iv, aad, tag bits)."""

    def __init__(self, lib_path: str, token_label: str, pin: str, key_label: str):
        import pkcs11  # optional dependency: `pip install .[pkcs11]`

        self._pkcs11 = pkcs11
        lib = pkcs11.lib(lib_path)
        token = lib.get_token(token_label=token_label)
        try:
            self._session = token.open(user_pin=pin)
        except pkcs11.exceptions.UserAlreadyLoggedIn:  # a login is per process: another session has it
            self._session = token.open()
        self._key = self._session.get_key(label=key_label, key_type=pkcs11.KeyType.AES)
        # The id must not depend on the key's bytes (the token will not show them): label and token.
        self.id = hashlib.sha256(b"cellguard pkcs11 kek" + token_label.encode() + b"/" + key_label.encode()).digest()[
            :_ID_LEN
        ]
        self.source = f"pkcs11:{token_label}/{key_label}"

    def _param(self, nonce: bytes, key_id: int):
        return self._pkcs11.GCMParams(nonce, _aad(key_id), 128)

    def wrap(self, key_id: int, root: bytes) -> bytes:
        nonce = secrets.token_bytes(_NONCE_LEN)
        ct = self._key.encrypt(bytes(root), mechanism=self._pkcs11.Mechanism.AES_GCM, mechanism_param=self._param(nonce, key_id))
        return MAGIC + self.id + nonce + bytes(ct)

    def unwrap(self, key_id: int, blob: bytes) -> bytes:
        n = len(MAGIC) + _ID_LEN
        nonce, ct = blob[n : n + _NONCE_LEN], blob[n + _NONCE_LEN :]
        try:
            return bytes(
                self._key.decrypt(ct, mechanism=self._pkcs11.Mechanism.AES_GCM, mechanism_param=self._param(nonce, key_id))
            )
        except self._pkcs11.PKCS11Error as e:  # the token's word for a bad tag
            raise InvalidTag() from e


@dataclass
class Keyring:
    """The KEK that wraps new keys (`current`) and the ones still accepted for reading during a rotation."""

    current: Kek | Pkcs11Kek
    older: list = field(default_factory=list)
    absent: list = field(default_factory=list)  # old-KEK files named but not there (between rotations)

    def wrap(self, key_id: int, root: bytes) -> bytes:
        if len(root) != 32:
            raise ValueError("root key must be 32 bytes")
        return self.current.wrap(key_id, root)

    def unwrap(self, key_id: int, blob: bytes) -> bytes:
        blob = bytes(blob)
        if not is_wrapped(blob):
            raise KekError(f"key id {key_id}: the stored root key is not sealed (run `cellguard hub rotate-kek`)")
        kid = kek_id_of(blob)
        for kek in (self.current, *self.older):
            if kek.id == kid:
                try:
                    return kek.unwrap(key_id, blob)
                except InvalidTag:
                    raise KekError(f"key id {key_id}: the sealed root key does not open (moved or altered)") from None
        raise KeyNotAtHand(f"key id {key_id}: sealed under a KEK that is not at hand (id {kid.hex()})")

    def describe(self) -> str:
        """Which KEKs this keyring holds, by id (never the keys): what an operator checks in a hub's log
        before rotating (docs/hub.md section 5)."""
        older = ", ".join(k.id.hex() for k in self.older) or "none"
        absent = "".join(f"; {p} absent (read when present, during a rotation)" for p in self.absent)
        return f"new root keys wrapped under KEK {self.current.id.hex()}; older KEKs also read: {older}{absent}"

    def needs_rewrap(self, blob: bytes) -> bool:
        """True for a blob not under the current KEK (an older one, or a clear key from before sealing)."""
        return not is_wrapped(bytes(blob)) or kek_id_of(bytes(blob)) != self.current.id


# ---- where the KEK comes from ---------------------------------------------------------------------
def read_kek_file(path: str | Path) -> Kek:
    """A KEK file: 32 raw bytes or 64 hex digits. Refused if others may read it."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
        data = p.read_bytes()
    except OSError as e:
        raise KekError(f"cannot read the KEK file {p}: {e.strerror}") from None
    if mode & 0o077:
        raise KekError(f"the KEK file {p} is readable by others (mode {mode & 0o777:o}); chmod 600 it")
    text = data.strip()
    try:
        key = data if len(data) == 32 else bytes.fromhex(text.decode()) if len(text) == 64 else data
    except ValueError:
        raise KekError(f"the KEK file {p} holds neither 32 raw bytes nor 64 hex digits") from None
    return Kek(key, str(p))


def create_kek_file(path: str | Path) -> Kek:
    """A new random KEK in a file only its owner may read (0600), never overwriting one."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    key = secrets.token_bytes(32)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    return Kek(key, str(p))


def _env_kek(name: str) -> Kek | None:
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return Kek(bytes.fromhex(value.strip()), "$" + name)
    except ValueError:
        raise KekError(f"${name} must be 64 hex digits") from None


def dev_kek_path(db: str | Path) -> Path | None:
    """hub.kek beside a SQLite database file (None for a PostgreSQL URL)."""
    text = str(db)
    if "://" in text:
        return None
    return Path(text).resolve().parent / DEV_KEK_NAME


def keyring_from(
    db: str | Path | None = None,
    kek_file: str | Path | None = None,
    old_kek_files: list[str | Path] | tuple = (),
    pkcs11: dict | None = None,
) -> Keyring | None:
    """The keyring an operator configured (see the module's docstring), or None if there is none.

    An old-KEK file that is not there is skipped (and named by Keyring.describe): a hub's unit may
    name one for good, present only during a rotation, so that `systemctl reload` (a rolling restart
    of the workers, cghub.workers) picks both KEKs up and then the new one alone (docs/hub.md
    section 5). A file that is there and does not read is an error, as the current KEK's is."""
    old_files = [*old_kek_files]
    if os.environ.get(ENV_KEK_OLD_FILE):  # a systemd unit's Environment=
        old_files.append(os.environ[ENV_KEK_OLD_FILE])
    absent = [str(p) for p in old_files if not os.path.lexists(p)]
    older: list = [read_kek_file(p) for p in old_files if str(p) not in absent]
    old_env = _env_kek(ENV_KEK_OLD)
    if old_env is not None:
        older.append(old_env)
    current: Kek | Pkcs11Kek | None = None
    if pkcs11:
        current = Pkcs11Kek(**pkcs11)
    elif kek_file:
        current = read_kek_file(kek_file)
    else:
        current = _env_kek(ENV_KEK)
        if current is None and os.environ.get(ENV_KEK_FILE):
            current = read_kek_file(os.environ[ENV_KEK_FILE])
        if current is None and db is not None:
            dev = dev_kek_path(db)
            if dev is not None and dev.exists():
                current = read_kek_file(dev)
    if current is None:
        return None
    return Keyring(current, [k for k in older if k.id != current.id], absent)


def require(keyring: Keyring | None, what: str) -> Keyring:
    if keyring is None:
        raise KekError(
            f"{what} needs a key-encryption key: --kek-file PATH, ${ENV_KEK} (64 hex digits), "
            f"${ENV_KEK_FILE}, or {DEV_KEK_NAME} beside the database (docs/hub.md)"
        )
    return keyring
