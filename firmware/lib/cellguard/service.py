# Service actions on the technician's console (docs/field-guide.md, "Service actions"): the device
# side of the challenge-response, the back-off after refused attempts, and what the actions do.
#
# Back-off: after n refused attempts in a row the next challenge or response is refused for
# 2**n seconds (at most an hour), with one line saying how long. The count is on flash
# (state/service_guard), so a reboot does not reset it: it restarts the wait in full. A success
# clears it. The clock is injectable (a test drives it); refusals during the wait cost nothing.
import json

from cellguard import atomic, runtime

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


SERVICE_FILE = "keys/service.json"
SERVICE_CONTEXT = b"cellguard-service-v1"
SERVICE_ACTIONS = ("open-repl", "reprovision", "wipe")
_NONCE_TTL_MS = const(120000)
_GUARD_FILE = "state/service_guard"
_BACKOFF_FIRST_MS = const(2000)
_BACKOFF_MAX_MS = const(3600000)


class ConsoleError(Exception):
    pass


class Backoff(ConsoleError):
    """A service attempt while the back-off runs: refused, not counted."""


def backoff_ms(fails):
    """The wait after `fails` refused attempts in a row: 0, then 2 s doubling, at most an hour."""
    return 0 if fails <= 0 else min(_BACKOFF_MAX_MS, _BACKOFF_FIRST_MS << min(fails - 1, 12))


def _guard_path():
    return runtime.path_join(runtime.fs_root(), _GUARD_FILE)


def _load_fails():
    try:
        return max(0, int(atomic.read_bytes(_guard_path())))
    except (OSError, ValueError):
        return 0


# ---- HMAC-SHA-256 and a constant-time compare: the messaging layer's (cellguard.crypto) when it is
# installed; this small fallback until then (same signatures), so the console never depends on it.
try:
    from cellguard.crypto import ct_equal, hmac_sha256
except ImportError:

    def hmac_sha256(key, msg):
        if len(key) > 64:
            key = runtime.sha256(key).digest()
        key = key + b"\x00" * (64 - len(key))
        inner = runtime.sha256(bytes(b ^ 0x36 for b in key))
        inner.update(msg)
        outer = runtime.sha256(bytes(b ^ 0x5C for b in key))
        outer.update(inner.digest())
        return outer.digest()

    def ct_equal(a, b):
        if len(a) != len(b):
            return False
        diff = 0
        for i in range(len(a)):
            diff |= a[i] ^ b[i]
        return diff == 0


def service_message(device_id, nonce_hex, action):
    return b"|".join((SERVICE_CONTEXT, device_id.encode(), nonce_hex.encode(), action.encode()))


class ServiceAuth:
    """The device side of the service challenge-response."""

    def __init__(self, record=None, clock=None):
        # record: {"device_id": str, "key_id": str, "key": hex} from keys/service.json (never shown).
        self._record = record
        self._nonce = None
        self._issued = 0
        self._clock = clock or runtime.ticks_ms
        self.fails = _load_fails()
        self._until = runtime.ticks_add(self._clock(), backoff_ms(self.fails))  # a reboot: the full wait
        self._counted = False  # check() counted this attempt as refused before comparing

    @classmethod
    def load(cls):
        try:
            with open(runtime.path_join(runtime.fs_root(), SERVICE_FILE)) as f:
                rec = json.load(f)
            bytes.fromhex(rec["key"])
            return cls({"device_id": str(rec["device_id"]), "key_id": str(rec.get("key_id", "")),
                        "key": rec["key"]})
        except (OSError, ValueError, KeyError, TypeError):
            return cls(None)

    @property
    def device_id(self):
        return self._record["device_id"] if self._record else None

    @property
    def key_id(self):
        return self._record["key_id"] if self._record else None

    def wait_ms(self):
        """How long the back-off still refuses service attempts."""
        return max(0, runtime.ticks_diff(self._until, self._clock())) if self.fails else 0

    def guard(self):
        left = self.wait_ms()
        if left:
            self.forget()
            raise Backoff("service actions refused for %d s after %d refused attempt(s) in a row"
                          % ((left + 999) // 1000, self.fails))

    def failed(self):
        """A refused attempt: the next one waits longer, across reboots."""
        if self._counted:  # check() counted it already, on flash before comparing
            self._counted = False
            return
        self.fails += 1
        self._until = runtime.ticks_add(self._clock(), backoff_ms(self.fails))
        self._save()

    def succeeded(self):
        self._counted = False
        if self.fails:
            self.fails = 0
            self._save()

    def _save(self):
        try:
            atomic.ensure_dir(runtime.path_join(runtime.fs_root(), "state"))
            atomic.write_atomic(_guard_path(), b"%d" % self.fails)
        except OSError:
            pass  # the count in RAM still holds until the next reboot

    def forget(self):
        self._nonce = None

    def challenge(self):
        self.guard()
        if self._record is None:
            raise ConsoleError("no service key on this device: service actions are unavailable")
        self._nonce = runtime.random_bytes(16).hex()
        self._issued = self._clock()
        return self._nonce

    def check(self, action, response_hex):
        """True if response_hex answers the current challenge for action; the nonce is used up."""
        self.guard()
        nonce, self._nonce = self._nonce, None
        if self._record is None:
            raise ConsoleError("no service key on this device")
        if nonce is None:
            raise ConsoleError("no challenge issued (run `service challenge` first)")
        if runtime.ticks_diff(self._clock(), self._issued) > _NONCE_TTL_MS:
            raise ConsoleError("the challenge expired; ask for a new one")
        try:
            response = bytes.fromhex(response_hex)
        except ValueError:
            raise ConsoleError("the response is not hex")
        key = bytes.fromhex(self._record["key"])
        expected = hmac_sha256(key, service_message(self._record["device_id"], nonce, action))
        # Counted as refused on flash before the comparison, and cleared if it succeeds: a power cut
        # at the moment a wrong guess is refused cannot save a guesser the back-off.
        self.failed()
        self._counted = True
        if not ct_equal(response, expected):
            raise ConsoleError("wrong response")
        return True


# ---- what the actions do ------------------------------------------------------------------------
def _remove_tree(path):
    import os

    try:
        entries = list(os.ilistdir(path))
    except (OSError, AttributeError):
        try:
            entries = [(n, 0x8000 if _is_file(path + "/" + n) else 0x4000) for n in os.listdir(path)]
        except OSError:
            return
    for ent in entries:
        p = path + "/" + ent[0]
        if ent[1] == 0x4000:
            _remove_tree(p)
            os.rmdir(p)
        else:
            os.remove(p)


def _is_file(p):
    import os

    return os.stat(p)[0] & 0x8000 != 0


def wipe_device():
    # Decommission: the keys (through keys.wipe() when the messaging layer is installed) and queued
    # data go; the service record stays so the unit can still be serviced or re-provisioned.
    import os

    try:
        from cellguard import keys

        keys.wipe()
    except ImportError:
        pass
    root = runtime.fs_root()
    keys_dir = runtime.path_join(root, "keys")
    try:
        names = os.listdir(keys_dir)
    except OSError:
        names = []
    for n in names:
        if n != "service.json":
            p = keys_dir + "/" + n
            if _is_file(p):
                os.remove(p)
            else:
                _remove_tree(p)
                os.rmdir(p)
    _remove_tree(runtime.path_join(root, "outbox"))


def mark_reprovision():
    import os

    try:
        os.mkdir(runtime.path_join(runtime.fs_root(), "state"))
    except OSError:
        pass
    with open(runtime.path_join(runtime.fs_root(), "state/reprovision"), "w") as f:
        f.write("1")
