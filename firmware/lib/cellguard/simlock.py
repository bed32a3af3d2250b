# IMEI/SIM lock: the device works only with the SIM and modem it was provisioned with.
#
# At production the device writes a binding record (IMEI, ICCID, IMSI, device id, key id, mode)
# authenticated with a key derived from its root key, and locks the SIM with a PIN derived from the
# same root key (docs/provisioning.md). At every boot, before any data session, `verify()` reads the
# identities back and unlocks the SIM; only OK (or UNLOCKED on a certification unit) lets the
# application open a PDP context. The PIN is never stored: it is derived when needed and only ever
# sent to the modem.
#
# Order matters: the IMEI and the ICCID are checked BEFORE the PIN is entered, so the device never
# spends a PIN attempt on (or shows its PIN to) a foreign SIM or modem; the IMSI, which needs an
# unlocked SIM, is checked after.
from cellguard import atomic, crypto, identity, keys, runtime
from cellguard.at import CmeError

OK = "OK"
UNLOCKED = "UNLOCKED"  # certification unit: the lock is deliberately off, and says so everywhere
SIM_MISMATCH = "SIM_MISMATCH"
MODEM_MISMATCH = "MODEM_MISMATCH"
BINDING_TAMPERED = "BINDING_TAMPERED"
SIM_ABSENT = "SIM_ABSENT"
SIM_PIN_WRONG = "SIM_PIN_WRONG"
SIM_PUK_LOCKED = "SIM_PUK_LOCKED"
UNPROVISIONED = "UNPROVISIONED"
SIM_LOCK_OFF = "SIM_LOCK_OFF"  # the SIM's PIN lock was turned off behind the device's back
# The modem answered an identity command with no valid IMEI / ICCID / IMSI (garbage, a wrong check
# digit): it cannot be told apart from a swapped or tampered modem or SIM, so it is refused as one.
IDENTITY_INVALID = "IDENTITY_INVALID"

DATA_ALLOWED = (OK, UNLOCKED)

# The TAMPER control message's event code for every lock refusal (docs/protocol.md section 5:
# "foreign SIM or modem"); its detail bytes are the outcome's name, e.g. b"SIM_MISMATCH".
EVENT_CODE = 1

BINDING_VERSION = 1
_BINDING_LABEL = b"cellguard/binding/v1"
_PIN_LABEL = b"cellguard/sim-pin/v1"
_CME_INCORRECT_PASSWORD = 16
_CME_SIM_PUK_REQUIRED = 12
_CME_SIM_NOT_INSERTED = 10
_CME_SIM_FAILURE = 13
_EVENTS_KEPT = 16
_FIELDS = ("v", "mode", "imei", "iccid", "imsi", "device", "kid")


class BindingError(Exception):
    """The binding record is missing (.missing) or fails its authentication."""

    def __init__(self, msg, missing=False):
        super().__init__(msg)
        self.missing = missing


def _state_dir():
    return runtime.path_join(runtime.fs_root(), "state")


def binding_path():
    return runtime.path_join(_state_dir(), "binding")


def lock_path():
    return runtime.path_join(_state_dir(), "simlock")


# ---- secrets derived from the root key --------------------------------------------------------
def sim_pin(root_key=None):
    """The device's SIM PIN: 8 decimal digits derived from the root key (never stored). root_key:
    a key not stored yet (provisioning derives the new PIN before it commits the new key)."""
    if root_key is None:
        raw = keys.derive(_PIN_LABEL, 8)
    else:
        raw = crypto.hkdf(bytes(root_key), keys.SALT, _PIN_LABEL, 8)
    n = int.from_bytes(raw, "big") % 100000000
    return "%08d" % n


def _binding_mac(body):
    return crypto.hmac_sha256(keys.derive(_BINDING_LABEL, 32), body)


# ---- the binding record -----------------------------------------------------------------------
def encode_binding(imei, iccid, imsi, device_id, key_id, unlocked=False):
    """Text lines "name=value", then "mac=<hex>" over every byte before it. Identities that do
    not validate (identity.valid) are refused: a unit bound to "1" would accept any modem's "1"."""
    bad = identity.check(imei, iccid, imsi)
    if bad:
        raise BindingError("not a valid " + bad + ": not binding it")
    values = (BINDING_VERSION, "unlocked" if unlocked else "locked", imei, iccid, imsi, device_id, key_id)
    body = "".join("%s=%s\n" % (k, v) for k, v in zip(_FIELDS, values)).encode()
    return body + b"mac=" + _binding_mac(body).hex().encode() + b"\n"


def decode_binding(data):
    """-> dict of the fields; BindingError if the record was edited or is malformed."""
    at = data.rfind(b"mac=")
    if at < 0 or not data.endswith(b"\n"):
        raise BindingError("binding record malformed")
    body = data[:at]
    try:
        mac = bytes.fromhex(data[at + 4 : -1].decode())
    except ValueError:
        raise BindingError("binding record malformed")
    if not crypto.ct_equal(mac, _binding_mac(body)):
        raise BindingError("binding record fails authentication")
    out = {}
    for line in body.decode().split("\n"):
        if line:
            name, _, value = line.partition("=")
            out[name] = value
    for name in _FIELDS:
        if name not in out:
            raise BindingError("binding record lacks " + name)
    if out["v"] != str(BINDING_VERSION):
        raise BindingError("binding record version " + out["v"])
    return out


# ---- the APN settings given at production -----------------------------------------------------
# state/apn: "apn=<name>", "user=<name>", "pwd=<hex>": the password sealed with AES-CCM under a key
# derived from the root key (random nonce, 16-byte tag), the APN and user name as its associated
# data, so the whole record is authenticated and the password never lies on the flash in clear.
# Stored because bg96 (+QICSGP) and sim7080 (+CNCFG) set APN and credentials in one command: a boot
# attaching with app.json's APN alone would overwrite the provisioned credentials with empty ones.
_APN_LABEL = b"cellguard/apn-password/v1"
_APN_NONCE = 13


def apn_path():
    return runtime.path_join(_state_dir(), "apn")


def _apn_aead():
    return crypto.AesCcm(keys.derive(_APN_LABEL, 16), tag_len=16)


def _apn_aad(apn, user):
    return ("apn=%s\nuser=%s\n" % (apn, user)).encode()


class BadSetting(ValueError):
    """A provisioning input the unit cannot store or send (the message names it, never its value)."""


def check_apn_settings(apn, user, pwd):
    """BadSetting unless the settings fit the record (one line each) and the modem's quoting."""
    for name, v in (("APN", apn), ("APN user", user), ("APN password", pwd)):
        if v is not None and ("\n" in v or "\r" in v or '"' in v):
            raise BadSetting(name + " holds a line break or a quote")


def store_apn(apn, user=None, pwd=None):
    check_apn_settings(apn, user, pwd)
    user = user or ""
    nonce = runtime.random_bytes(_APN_NONCE)
    sealed = _apn_aead().seal(nonce, _apn_aad(apn, user), (pwd or "").encode())
    atomic.ensure_dir(_state_dir())
    atomic.write_atomic(apn_path(), _apn_aad(apn, user) + b"pwd=" + (nonce + sealed).hex().encode() + b"\n")


def load_apn():
    """-> (apn, user, pwd) as provisioned (user/pwd None if empty), None if none were given.
    ValueError if the record was edited or sealed under another root key."""
    try:
        lines = atomic.read_bytes(apn_path()).decode().split("\n")
    except OSError:
        return None
    try:
        apn, user, pwd = [ln.partition("=")[2] for ln in lines[:3]]
        blob = bytes.fromhex(pwd)
        plain = _apn_aead().open(blob[:_APN_NONCE], _apn_aad(apn, user), blob[_APN_NONCE:])
    except (ValueError, IndexError, crypto.CryptoError):  # malformed or edited: the same to us
        raise ValueError("APN record fails authentication")
    return apn, user or None, bytes(plain).decode() or None


def forget_apn():
    if atomic.exists(apn_path()):
        atomic.remove(apn_path())


def write_binding(record):
    atomic.ensure_dir(_state_dir())
    atomic.write_atomic(binding_path(), record)


def load_binding():
    try:
        data = atomic.read_bytes(binding_path())
    except OSError:
        raise BindingError("no binding record", missing=True)
    return decode_binding(data)


# ---- verification -----------------------------------------------------------------------------
# +CME codes that mean the SIM is not there (any more): 10 not inserted, 13 SIM failure. A SIM
# pulled out in the middle of the check is SIM_ABSENT, never an unhandled modem error (whose text
# would carry the command, and so the PIN, to the console).
_CME_NO_SIM = (_CME_SIM_NOT_INSERTED, _CME_SIM_FAILURE)


def verify(modem):
    """Check SIM and modem against the binding and unlock the SIM. -> (outcome, reason).

    Reasons never hold a modem error's text (it names the command, which may carry the PIN)."""
    try:
        return _verify(modem)
    except identity.IdentityInvalid as e:
        return IDENTITY_INVALID, "the modem reported no valid " + e.kind
    except CmeError as e:
        if e.code in _CME_NO_SIM:
            return SIM_ABSENT, "SIM gone during the check (CME %d)" % e.code
        if e.code == _CME_SIM_PUK_REQUIRED:
            return SIM_PUK_LOCKED, "SIM needs its PUK"
        raise


def _verify(modem):
    if not keys.provisioned():
        return UNPROVISIONED, "no root key"
    try:
        binding = load_binding()
    except BindingError as e:
        return (UNPROVISIONED if e.missing else BINDING_TAMPERED), str(e)
    if binding["mode"] == "unlocked":
        return UNLOCKED, "certification unit: SIM/IMEI lock disabled at provisioning"

    imei = modem.imei()
    if imei != binding["imei"]:
        return MODEM_MISMATCH, "IMEI is not the provisioned modem's"
    state = modem.sim_state()
    if state in ("ABSENT", "FAILURE"):
        return SIM_ABSENT, "no SIM (" + state + ")"
    if modem.iccid() != binding["iccid"]:
        return SIM_MISMATCH, "ICCID is not the provisioned SIM's"
    if state == "SIM PUK":
        return SIM_PUK_LOCKED, "SIM needs its PUK: PIN retries exhausted"

    if state == "SIM PIN":
        refused = _unlock(modem, binding)
        if refused:
            return refused
    elif not modem.pin_lock_enabled():
        # READY without a PIN lock on a locked unit. Provisioning writes the binding only after
        # the lock is on with the device PIN, so this is tampering: someone turned the lock off
        # (which takes the PIN), or this is a clone that only matches on the ICCID. Decision: do
        # not put the lock back. That would send the device PIN to a SIM not proven ours and
        # spend one of its attempts per check (three checks PUK-lock it). Report and refuse;
        # the service desk re-provisions (docs/provisioning.md).
        return SIM_LOCK_OFF, "SIM PIN lock was turned off: not sending the device PIN"

    if modem.imsi() != binding["imsi"]:
        return SIM_MISMATCH, "IMSI is not the provisioned SIM's"
    return OK, "SIM and modem match the binding"


def _unlock(modem, binding):
    """Enter the device PIN unless that risks the SIM. -> None, or a refusal (outcome, reason)."""
    retries = modem.pin_retries()
    if retries is None:
        # No retry counter (a dialect that cannot tell): the only guard left is not to ask a SIM with
        # this ICCID again once one refused this very PIN (state/pin_refused).
        if pin_refused(binding):
            return SIM_PIN_WRONG, "SIM rejected the device PIN before: not trying it again"
    elif retries[0] <= 1:
        # Never exhaust the SIM: with one attempt left a wrong PIN would PUK-lock it for good. The
        # counter is the card's own, so a refusal by another card (a clone of the ICCID) does not
        # stop this one: the refusal record is not consulted where there is a counter.
        return SIM_PIN_WRONG, "one PIN retry left: not trying"
    try:
        modem.enter_pin(sim_pin())
    except CmeError as e:
        if e.code == _CME_INCORRECT_PASSWORD:
            _remember_refusal(binding)
            return SIM_PIN_WRONG, "SIM rejected the device PIN"
        raise  # 10/13 (SIM gone) and 12 (PUK) are mapped by verify()
    _forget_refusal()  # this card holds the PIN, whichever card refused it before
    return None


# A SIM that rejected the device PIN keeps rejecting it: the derived PIN only changes with the root
# key. state/pin_refused holds "<iccid> <key id>" of the last refusal. Where the dialect reports no
# retry counter it keeps the unit from asking a SIM with that ICCID again (the next check, the next
# boot); provisioning reads it to start from the delivery PIN. A card that accepts the PIN, and a new
# binding (re-provisioning), clear it. Only the provisioned SIM's ICCID gets here (a foreign ICCID is
# refused before the PIN).
def pin_refused_path():
    return runtime.path_join(_state_dir(), "pin_refused")


def _refusal_tag(binding):
    return ("%s %s\n" % (binding["iccid"], binding["kid"])).encode()


def pin_refused(binding):
    try:
        return atomic.read_bytes(pin_refused_path()) == _refusal_tag(binding)
    except OSError:
        return False


def _remember_refusal(binding):
    atomic.ensure_dir(_state_dir())
    atomic.write_atomic(pin_refused_path(), _refusal_tag(binding))


def _forget_refusal():
    if atomic.exists(pin_refused_path()):
        atomic.remove(pin_refused_path())


def certification_unit():
    """True if the binding says this is an unlocked certification unit (False without a valid one).
    Read from the binding, not from a check's outcome: known before the modem is asked anything."""
    if not keys.provisioned():
        return False
    try:
        return load_binding()["mode"] == "unlocked"
    except BindingError:
        return False


class SimLock:
    """The lock as the application uses it: check, remember, report, and gate the data session.

    Every outcome but OK/UNLOCKED is persisted as a tamper event with a timestamp (state/simlock),
    logged to the status registry, and handed to `on_tamper(outcome, reason)` (the application
    queues a TAMPER control message, which the outbox delivers once the lock is OK again: a tamper
    report never leaves through a foreign SIM or modem).
    """

    def __init__(self, modem, on_tamper=None):
        self.modem = modem
        self.on_tamper = on_tamper
        self.outcome = None
        self.reason = ""
        self._passed_session = None  # the modem session in which the lock last let data through
        self.events = self._load_events()
        _publish_history(self.events)  # tamper events from earlier boots, on the status page at once
        _publish_mode()

    def _load_events(self):
        try:
            lines = atomic.read_bytes(lock_path()).decode().split("\n")
        except (OSError, ValueError):
            return []
        return [ln for ln in lines if ln]

    def _persist(self):
        atomic.ensure_dir(_state_dir())
        atomic.write_atomic(lock_path(), ("\n".join(self.events) + "\n").encode())

    def check(self):
        """Run the verification; returns the outcome. Safe to call again and again."""
        session = self.modem.session
        self._passed_session = None
        outcome, reason = verify(self.modem)
        if outcome in DATA_ALLOWED and self.modem.session == session:
            self._passed_session = session  # a restart during the check does not count as passed
        changed = outcome != self.outcome
        self.outcome, self.reason = outcome, reason
        _status(outcome, reason)
        if outcome not in DATA_ALLOWED and changed:
            self.events.append("%d %s %s" % (runtime.time_s(), outcome, reason))
            self.events = self.events[-_EVENTS_KEPT:]
            self._persist()
            _publish_history(self.events)
            if self.on_tamper:
                self.on_tamper(outcome, reason)
        return outcome

    @property
    def allows_data(self):
        return self.outcome in DATA_ALLOWED

    @property
    def unlocked_unit(self):
        return self.outcome == UNLOCKED

    def require(self):
        """The modem's data gate (Modem.data_gate): returns if the lock passed since the modem
        last (re)started, else checks again; raises LockedOut unless data is allowed. After a
        restart this is what re-enters the PIN of a PIN-locked SIM, and what stops a foreign SIM
        put in while the unit was online."""
        if self._passed_session == self.modem.session:
            return
        if self.check() not in DATA_ALLOWED:
            raise LockedOut(self.outcome, self.reason)

    def attach(self, apn, user=None, pwd=None, registration_timeout_ms=None):
        """Check the lock, then (only if it allows data) register and open the PDP context."""
        if self.check() not in DATA_ALLOWED:
            raise LockedOut(self.outcome, self.reason)
        m = self.modem
        m.wait_registered(registration_timeout_ms or m.attach_timeout_ms)
        m.set_apn(apn, user, pwd)
        m.activate_pdp()


class LockedOut(Exception):
    """The lock refused the data session; .outcome says why."""

    def __init__(self, outcome, reason):
        super().__init__(outcome + ": " + reason)
        self.outcome = outcome


def _status_module():
    try:
        from cellguard import status
    except ImportError:  # the status registry is optional (minimal builds)
        return None
    return status


def _publish_history(events):
    # The newest persisted event ("<time> <outcome> <reason>"): the console's `last event`.
    status = _status_module()
    if status is None or not events:
        return
    stamp, _, rest = events[-1].partition(" ")
    try:
        status.set("sim", "last_event_t", int(stamp))
    except ValueError:
        status.set("sim", "last_event_t", None)
    status.set("sim", "last_event", rest.partition(" ")[0])


def _publish_mode():
    # A certification unit says so from the first moment, before the modem has been asked anything.
    status = _status_module()
    if status is None or not keys.provisioned():
        return
    try:
        load_binding()
    except BindingError:
        return
    status.set("sim", "certification_unit", certification_unit())


def _status(outcome, reason):
    status = _status_module()
    if status is None:
        return
    status.set("sim", "state", outcome)
    if outcome == UNLOCKED:
        status.set("sim", "certification_unit", True)
    status.set("sim", "reason", reason)
    if outcome not in DATA_ALLOWED:
        status.log("simlock: " + outcome + " (" + reason + ")", error=True)
    elif outcome == UNLOCKED:
        status.log("simlock: UNLOCKED certification unit", error=False)


# ---- production: lock the SIM to this device ---------------------------------------------------
def _refuse_last_retry(modem):
    # A wrong --factory-pin spends an attempt per run: never let a re-run PUK-lock the SIM. Returns
    # the retry counters (None where the modem reports none).
    retries = modem.pin_retries()
    if retries is not None and retries[0] <= 1:
        raise BindingError("SIM has one PIN retry left: not trying (is --factory-pin right?)")
    return retries


def bound():
    """Provisioned: a root key and a binding record that verifies under it. A unit a failed run
    left with a key but no binding is not: its SIM never got that key's PIN."""
    if not keys.provisioned():
        return False
    try:
        load_binding()
    except BindingError:
        return False
    return True


def _pins_on_sim(iccid, factory_pin):
    # The PINs the SIM may hold, the likeliest first. First the PIN of a key a run staged right
    # before its PIN change and never committed (a power cut at that change: keys.stage_root). Then
    # the device PIN where the SIM is known to hold it: a verifying locked binding for this very SIM
    # (after a card with its ICCID refused that PIN, the delivery PIN first). A root key on the flash
    # without a binding that verifies under it: a run cut by a power loss after the PIN change, once
    # the key was stored, so that key's PIN first (older firmware also left keys of failed runs
    # behind: then the delivery PIN, second). Anything else (a fresh unit, a certification unit, a
    # new SIM put in by the service desk): factory_pin.
    pins = _known_pins(iccid, factory_pin)
    staged = keys.staged_root()
    if staged is not None and sim_pin(staged) not in pins:
        pins = (sim_pin(staged),) + pins
    return pins


def _known_pins(iccid, factory_pin):
    if bound():
        binding = load_binding()
        if binding["mode"] != "locked" or binding["iccid"] != iccid:
            return (factory_pin,)
        if pin_refused(binding):
            return (factory_pin, sim_pin())
        return (sim_pin(),)
    root = keys.stored_root()
    if root is None:
        return (factory_pin,)
    return (sim_pin(root), factory_pin)


def _with_pin(modem, pins, action):
    """action(pin) with the first of `pins` the SIM accepts; returns that PIN. Before every attempt
    the SIM's last retry is refused (BindingError); a second PIN is tried only where the modem
    reports the counter. The refusal of the last PIN tried is raised (CmeError 16)."""
    for i, pin in enumerate(pins):
        retries = _refuse_last_retry(modem)
        try:
            action(pin)
            return pin
        except CmeError as e:
            if e.code != _CME_INCORRECT_PASSWORD or retries is None or i + 1 == len(pins):
                raise
    raise ValueError("no PIN to try")


def provision_sim(modem, factory_pin, root_key, device_id, key_id, unlocked=False, apn=None, apn_user=None,
                  apn_pwd=None):
    """Read identities, lock the SIM with the new device PIN, then commit: store the root key and
    identity (keys.provision), the APN record and the binding.

    factory_pin: the SIM's PIN as delivered (SIM vendors ship a known one); a re-provisioned SIM
    that holds the old device PIN is changed from that one. The new device PIN (derived from
    root_key) replaces it and is never returned or printed. The PIN change is the last step that
    can fail on the modem: nothing is stored before it but the new key, staged (keys.stage_root)
    so that a cut at the change is recovered, and removed when the change is refused, so a failed
    run (a wrong factory PIN) leaves the unit as it was, and the next run starts from the same PIN. Returns the public
    identities for the production record. A certification unit (unlocked=True) gets a binding
    that says so and its SIM is left as is.
    """
    if apn:
        check_apn_settings(apn, apn_user, apn_pwd)  # bad input refused before the SIM is touched
    try:
        return _provision_sim(modem, factory_pin, root_key, device_id, key_id, unlocked, apn, apn_user, apn_pwd)
    except identity.IdentityInvalid as e:
        raise BindingError("the modem reported no valid " + e.kind + ": not binding it")


def _provision_sim(modem, factory_pin, root_key, device_id, key_id, unlocked, apn, apn_user, apn_pwd):
    imei = modem.imei()
    state = modem.sim_state()
    if state in ("ABSENT", "FAILURE"):
        raise BindingError("no SIM to provision (" + state + ")")
    if state == "SIM PUK":
        raise BindingError("SIM is PUK-locked")
    iccid = modem.iccid()
    pins = _pins_on_sim(iccid, factory_pin)
    if state == "SIM PIN" or not unlocked:
        _refuse_last_retry(modem)
    if state == "SIM PIN":
        pins = (_with_pin(modem, pins, modem.enter_pin),)
    # Lock first (with the PIN the SIM has now): CPWD needs the lock on.
    if not unlocked and not modem.pin_lock_enabled():
        pins = (_with_pin(modem, pins, lambda pin: modem.set_pin_lock(True, pin)),)
    imsi = modem.imsi()
    if apn:
        modem.set_apn(apn, apn_user, apn_pwd)
    if not unlocked:
        new_pin = sim_pin(root_key)
        keys.stage_root(root_key)  # a cut from here to the commit: the re-run tries this PIN too
        try:
            _with_pin(modem, pins, lambda pin: modem.change_pin(pin, new_pin))  # the point of no return
        except (CmeError, BindingError):
            keys.unstage()  # refused: the SIM keeps the PIN it had
            raise
    _commit(root_key, device_id, key_id, (imei, iccid, imsi), unlocked, (apn, apn_user, apn_pwd))
    return {"imei": imei, "iccid": iccid, "imsi": imsi, "unlocked": unlocked}


def _commit(root_key, device_id, key_id, ids, unlocked, apn):
    # Flash writes only, the binding right after the key: the SIM holds the new key's PIN now.
    keys.provision(root_key, device_id, key_id)
    write_binding(encode_binding(ids[0], ids[1], ids[2], device_id, key_id, unlocked))
    keys.unstage()
    _forget_refusal()  # a refusal of the old binding's PIN says nothing about the new one
    if apn[0]:
        store_apn(*apn)  # every boot attaches with these (App)
    else:
        forget_apn()  # a re-provisioned unit's old record is sealed under its old root key
