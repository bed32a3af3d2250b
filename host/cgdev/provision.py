"""Provision a cellguard unit at production: root key, device id, SIM/IMEI binding, SIM PIN lock.

The steps that touch the SIM and modem run ON THE DEVICE, through the firmware's own modem driver
(cellguard.simlock.provision_sim), so the SIM PIN is derived and used on the device and never
exists on the host. The host creates the root key, registers it with the hub's key store, hands it
to the device once, and forgets it. Nothing secret is printed or logged.

    cellguard provision --hub-db hub.sqlite --device /dev/ttyACM0         # a board (mpremote)
    cellguard provision --hub-db hub.sqlite --modem /dev/pts/5 --dialect bg96 --fs ./unit
                                              # the firmware on the MicroPython unix port, against a
                                              # modem on a serial port / the emulated modem's pty
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # host/<package>/<module>.py

log = logging.getLogger("cellguard.provision")

# A device script reports on one line that starts with this marker; everything else it prints
# (driver logs) is ignored by the host.
RESULT = "PROVISION-RESULT "


class ProvisionError(Exception):
    """Provisioning refused or failed; the message says why (and never holds a secret)."""


class AlreadyProvisioned(ProvisionError):
    """The unit has keys already and --reprovision was not given (exit code 5)."""


EXIT_FAILED = 1
EXIT_ALREADY_PROVISIONED = 5


@dataclass
class Request:
    device_id: str | None = None  # default: a random one
    factory_pin: str = "1234"  # the PIN the SIM is delivered with
    unlocked: bool = False  # certification unit: no SIM/IMEI lock, reported loudly
    reprovision: bool = False
    apn: str | None = None
    apn_user: str | None = None
    apn_pwd: str | None = None


# How the device script gets its modem: through the board profile on a board, or straight on a
# serial port / pty when the firmware runs on the unix port next to an emulated modem.
BOARD_MODEM = """
from cellguard import board, modemstatus
def open_modem():
    return modemstatus.open_modem(board.load())
"""

PTY_MODEM = """
from cellguard import at, dialects, modem, runtime
def open_modem():
    d = dialects.get(%(dialect)r)
    return modem.Modem(at.AtEngine(runtime.open_uart(%(port)r), d.line_buffer(), boot_urcs=d.boot_urcs), d)
"""

# First look: is the unit provisioned already, as which device, and which modem and SIM are in it
# (to recognise a re-run after an interrupted one)? Nothing secret in the answer.
QUERY_SCRIPT = """
import json
from cellguard import keys
from cellguard import simlock
k = keys.provisioned()
try:
    _m = open_modem()
    _m.init()
    _ids = [_m.imei(), _m.iccid()]
    _bad = None
except Exception as e:  # no modem or no SIM: the run itself says why; an invalid identity: refused
    _ids = [None, None]
    _bad = getattr(e, "kind", None)
try:  # the id the service record (keys/service.json, tools/flash.py) names: `service challenge` shows it
    from cellguard import runtime
    with open(runtime.path_join(runtime.fs_root(), "keys/service.json")) as f:
        _svc = str(json.load(f)["device_id"])
except Exception:
    _svc = None
print(%(marker)r + json.dumps({"ok": True, "provisioned": simlock.bound(), "has_keys": k,
                               "device_id": keys.device_id() if k else None, "imei": _ids[0], "iccid": _ids[1],
                               "invalid_identity": _bad, "service_id": _svc}))
"""

DEVICE_SCRIPT = """
import json
from cellguard import keys, simlock
def _result(**kw):
    print(%(marker)r + json.dumps(kw))
def _provision():
    # Provisioned means a binding that verifies: a key a failed run left behind does not count.
    if simlock.bound() and not %(reprovision)r:
        return _result(ok=False, reason="already provisioned as device " + keys.device_id())
    m = open_modem()
    m.init()
    # The key is stored only once the SIM has its PIN (provision_sim commits last).
    ids = simlock.provision_sim(m, %(factory_pin)r, bytes.fromhex(%(root_hex)r), %(device_id)r, %(key_id)d,
                                unlocked=%(unlocked)r, apn=%(apn)r, apn_user=%(apn_user)r, apn_pwd=%(apn_pwd)r)
    # Committed: the unit holds the new key now, so the run has succeeded whatever the check says
    # (a failed run would make the host retire the key the unit and its SIM now depend on).
    try:
        outcome, reason = simlock.verify(m)
    except Exception as e:
        outcome, reason = "UNKNOWN", "the check after provisioning failed: " + _failure(e)
    _result(ok=True, outcome=outcome, reason=reason, **ids)
def _failure(e):
    # Never the exception's text: a modem error quotes its command, and +CLCK/+CPWD/+CPIN carry
    # the PINs, +CGAUTH/+QICSGP/+CNCFG the APN password. Its type, code and command name suffice.
    if isinstance(e, (simlock.BindingError, simlock.BadSetting)):
        return "BindingError: " + str(e)  # the lock's own words: no secret in them
    out = type(e).__name__
    if getattr(e, "code", None) is not None:
        out += " (error code %%d)" %% e.code
    cmd = getattr(e, "command", None)
    if isinstance(cmd, (bytes, bytearray)):
        name = bytes(cmd)
        for sep in (b"=", b"?"):
            name = name.split(sep)[0]
        out += " in " + name.decode()
    return out
try:
    _provision()
except Exception as e:
    _result(ok=False, reason=_failure(e))
"""


def device_script(modem_src: str, root_key: bytes, device_id: str, key_id: int, req: Request) -> str:
    return modem_src + DEVICE_SCRIPT % {
        "marker": RESULT,
        "reprovision": req.reprovision,
        "factory_pin": req.factory_pin,
        "root_hex": root_key.hex(),
        "device_id": device_id,
        "key_id": key_id,
        "unlocked": req.unlocked,
        "apn": req.apn,
        "apn_user": req.apn_user,
        "apn_pwd": req.apn_pwd,
    }


def parse_result(output: str) -> dict:
    for line in output.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT) :])
    raise ProvisionError("the device did not report a result (is the cellguard firmware on it?)")


@contextmanager
def _key_store(hub_db: str | Path, failure: str = "the hub's key store failed") -> Iterator:
    """The hub's key store (a SQLite file or a postgresql:// URL, the same on a production line) for
    one step. What it raises - a refusal (ValueError), no KEK, its database failing on either backend -
    ends the run as a ProvisionError that says why, never as a traceback."""
    from cghub import keyseal
    from cghub.server import HubStore
    from cghub.store import database_errors

    try:
        store = HubStore(hub_db)
        try:
            yield store
        finally:
            store.close()
    except (ValueError, keyseal.KekError, *database_errors(hub_db)) as e:
        raise ProvisionError(f"{failure}: {e}") from None


def next_key_id(db_path: str | Path) -> int:
    """Key ids are never reused: one more than the highest the hub has ever registered."""
    with _key_store(db_path) as store:
        return store.max_key_id() + 1


def mask(identifier: str, keep: int = 4) -> str:
    return "*" * max(0, len(identifier) - keep) + identifier[-keep:]


def provision(hub_db: str | Path, run_on_device: Callable[[str], str], modem_src: str, req: Request) -> dict:
    """Provision one unit. run_on_device(script) runs the script on the device and returns its output.

    Returns the unit's public record (device id, key id, IMEI, ICCID, IMSI, lock outcome).
    """
    from cghub import keyseal

    # The hub stores the root key sealed under its KEK: without one, stop before touching the unit.
    if keyseal.keyring_from(hub_db) is None:
        raise ProvisionError(str(keyseal.KekError(
            f"no key-encryption key for {hub_db}: set $CELLGUARD_HUB_KEK or ${keyseal.ENV_KEK_FILE}, "
            f"or put {keyseal.DEV_KEK_NAME} beside it (docs/hub.md)")))
    state = parse_result(run_on_device(modem_src + QUERY_SCRIPT % {"marker": RESULT}))
    if state["provisioned"] and not req.reprovision:
        raise AlreadyProvisioned(
            f"already provisioned as device {state['device_id']}; re-run with --reprovision to replace its keys"
        )
    if state.get("invalid_identity"):  # before anything is registered or the SIM touched
        raise ProvisionError(f"the modem reported no valid {state['invalid_identity']}: not binding it")
    unit = (state.get("imei"), state.get("iccid"))
    # One id everywhere: the unit's own, else the one its service record names (the challenge's).
    device_id = req.device_id or state["device_id"] or state.get("service_id") or _interrupted_run(hub_db, unit)
    device_id = device_id or "cg-" + secrets.token_hex(6)
    key_id = next_key_id(hub_db)
    previous = _live_keys(hub_db, device_id)
    # Whatever key the unit holds (a binding's, or one a failed run left) is replaced, and so are
    # the keys of this very unit's interrupted runs (which it may hold without knowing its id).
    replace = state.get("has_keys", state["provisioned"])
    replace = replace or _only_interrupted_runs_of(hub_db, device_id, unit)
    root_key = bytearray(secrets.token_bytes(32))
    try:
        # The hub learns the key first: a device holding keys its hub does not know is worse than
        # a registered key id that a failed run never used (key ids are never reused anyway).
        with _key_store(hub_db, "hub refused the device") as store:
            store.register_device(key_id, device_id, bytes(root_key), replace=replace)
        _run_started(hub_db, key_id, device_id, unit, previous)
        output = run_on_device(device_script(modem_src, bytes(root_key), device_id, key_id, req))
    finally:
        root_key[:] = bytes(len(root_key))  # the host keeps no copy once the device has it
    result = parse_result(output)
    if not result.get("ok"):
        _undo_registration(hub_db, key_id, previous)
        raise ProvisionError(result.get("reason", "device refused"))
    _run_finished(hub_db, key_id)
    result.update(device_id=device_id, key_id=key_id)
    return result


# ---- interrupted runs --------------------------------------------------------------------------
# A run cut short (power lost, cable pulled) leaves its key live in the hub (the unit may hold it)
# and gives the host no result. The key store remembers every run - key id, device id, the unit's
# IMEI and ICCID, finished or not - so that a re-run of the same unit is recognised: same modem and
# same SIM, and every live key of the device id from a run that never finished. Only then are those
# keys replaced without --reprovision; a key a finished run handed out, or another unit under the
# same device id, is never replaced this way (docs/provisioning.md). The record is the key store's
# (Store.record_provisioning_run ...): in the SQLite file or the PostgreSQL database alike.
def _run_started(hub_db: str | Path, key_id: int, device_id: str, unit: tuple, previous: list[int]) -> None:
    try:
        with _key_store(hub_db) as store:
            store.record_provisioning_run(key_id, device_id, *unit)
    except ProvisionError:
        # The unit was not touched: a key it never got must not stay live unrecorded, where a re-run
        # would neither recognise it nor be allowed to replace it.
        _undo_registration(hub_db, key_id, previous)
        raise


def _run_finished(hub_db: str | Path, key_id: int) -> None:
    # The unit holds the new key by now: a failure here must not read as a failed provisioning.
    with _key_store(hub_db, f"the unit took key id {key_id}, but the key store did not mark its run finished") as store:
        store.finish_provisioning_run(key_id)


def _unfinished_live(hub_db: str | Path, unit: tuple) -> list[tuple[str, int]]:
    # (device id, key id) of the live keys from this unit's runs that never finished, newest first;
    # none for a unit whose IMEI or ICCID was not read (it cannot be recognised).
    if None in unit:
        return []
    with _key_store(hub_db) as store:
        return store.unfinished_provisioning_runs(*unit)


def _interrupted_run(hub_db: str | Path, unit: tuple) -> str | None:
    """The device id of this unit's interrupted run (None if none, or the unit is not known)."""
    rows = _unfinished_live(hub_db, unit)
    return rows[0][0] if rows else None


def _only_interrupted_runs_of(hub_db: str | Path, device_id: str, unit: tuple) -> bool:
    """True if device_id has live keys and every one comes from an unfinished run of this unit."""
    live = set(_live_keys(hub_db, device_id)) if None not in unit else set()
    if not live:
        return False
    mine = {kid for dev, kid in _unfinished_live(hub_db, unit) if dev == device_id}
    return live <= mine


# Through the store: its change log tells running hubs to drop a retired or revived key from their caches.
def _live_keys(hub_db: str | Path, device_id: str) -> list[int]:
    with _key_store(hub_db) as store:
        return store.live_key_ids(device_id)


def _undo_registration(hub_db: str | Path, key_id: int, previous: list[int]) -> None:
    """The unit never took the new key: the hub must not accept messages under it. The unit stores
    nothing before the SIM step has succeeded, so it still holds the key it had: the hub takes that
    one back (a re-provisioning that failed changes nothing)."""
    with _key_store(hub_db) as store:
        store.set_retired([key_id], True)
        store.set_retired(previous, False)


def run_on_unix_port(fs_dir: Path, heapsize: str = "256K", timeout: float = 120) -> Callable[[str], str]:
    """The firmware on the MicroPython unix port, its storage in fs_dir. The script goes through
    stdin, not the command line, so the root key never shows in a process listing."""
    import os

    micropython = Path(sys.executable).parent / "micropython"
    env = dict(os.environ)
    env["MICROPYPATH"] = ".frozen:" + str(REPO / "firmware" / "lib")
    env["CELLGUARD_FS"] = str(fs_dir)

    def run(script: str) -> str:
        fs_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [str(micropython), "-X", f"heapsize={heapsize}"],
            input=script,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
        return proc.stdout + proc.stderr

    return run


def run_over_mpremote(port: str) -> Callable[[str], str]:
    """A board (or the virtual board) through mpremote's raw REPL; the script travels over serial."""

    def run(script: str) -> str:
        from mpremote.transport_serial import SerialTransport

        transport = SerialTransport(port, baudrate=115200)
        try:
            # No soft reset: on a unit whose REPL a service response opened, a reset locks it again.
            transport.enter_raw_repl(soft_reset=False)
            out = transport.exec(script)
            transport.exit_raw_repl()
        finally:
            transport.close()
        return out.decode(errors="replace")

    return run


# The APN password reaches the tool through this variable or --apn-password-file: the command line
# shows in any process listing. It is never printed; on the unit it is stored sealed (state/apn).
PASSWORD_ENV = "CELLGUARD_APN_PASSWORD"


def apn_password(args) -> str | None:
    """--apn-password-file, else $CELLGUARD_APN_PASSWORD, else --apn-password; None if none."""
    import os

    if args.apn_password_file is not None:
        try:
            text = args.apn_password_file.read_text()
        except OSError as e:
            raise SystemExit(f"provisioning refused: cannot read --apn-password-file: {e.strerror}") from None
        return text.splitlines()[0] if text else ""
    return os.environ.get(PASSWORD_ENV) or args.apn_password


# The SIM's delivery PIN likewise: this variable or --factory-pin-file (the command line shows in
# any process listing). It is never printed.
FACTORY_PIN_ENV = "CELLGUARD_FACTORY_PIN"
DEFAULT_FACTORY_PIN = "1234"


def factory_pin(args) -> str:
    """--factory-pin-file, else $CELLGUARD_FACTORY_PIN, else --factory-pin, else 1234. A PIN that is
    not 4 to 8 digits is refused before the unit is touched (the message never quotes it)."""
    import os

    if args.factory_pin_file is not None:
        try:
            text = args.factory_pin_file.read_text()
        except OSError as e:
            raise SystemExit(f"provisioning refused: cannot read --factory-pin-file: {e.strerror}") from None
        pin = text.splitlines()[0].strip() if text.strip() else ""
        source = "--factory-pin-file"
    elif os.environ.get(FACTORY_PIN_ENV):
        pin, source = os.environ[FACTORY_PIN_ENV].strip(), "$" + FACTORY_PIN_ENV
    elif args.factory_pin is not None:
        pin, source = args.factory_pin, "--factory-pin"
    else:
        return DEFAULT_FACTORY_PIN
    if not (pin.isdigit() and 4 <= len(pin) <= 8):
        raise SystemExit(f"provisioning refused: the factory PIN from {source} is not 4 to 8 digits")
    return pin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--hub-db", default="build/hub.sqlite", help="the hub's key store: a SQLite file or a postgresql:// URL"
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--device", "--port", metavar="PORT", help="a board's serial port (through mpremote)")
    where.add_argument("--modem", metavar="PORT", help="a modem's serial port or pty; firmware on the unix port")
    parser.add_argument("--dialect", default="bg96", help="with --modem: nrf91, bg96, sim7080, sara-r4")
    parser.add_argument("--fs", type=Path, default=Path("build/unit"), help="with --modem: the unit's storage")
    parser.add_argument("--device-id", help="default: a random one")
    parser.add_argument(
        "--factory-pin-file", type=Path, help="a file holding the PIN the SIMs are delivered with (its first line)"
    )
    parser.add_argument(
        "--factory-pin",
        help=f"the SIMs' delivery PIN on the command line (visible to ps: prefer ${FACTORY_PIN_ENV}; default 1234)",
    )
    parser.add_argument("--unlocked", action="store_true", help="certification unit: no SIM/IMEI lock")
    parser.add_argument(
        "--reprovision", "--force", action="store_true", help="replace the keys of a provisioned unit"
    )
    parser.add_argument("--board", help="the board profile's name (informational; the unit reads its own)")
    parser.add_argument("--apn")
    parser.add_argument("--apn-user")
    parser.add_argument(
        "--apn-password-file", type=Path, help="a file holding the APN password (its first line)"
    )
    parser.add_argument(
        "--apn-password", help=f"the APN password on the command line (visible to ps: prefer ${PASSWORD_ENV})"
    )
    parser.add_argument("--json", action="store_true", help="print the unit's record as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    req = Request(
        device_id=args.device_id,
        factory_pin=factory_pin(args),
        unlocked=args.unlocked,
        reprovision=args.reprovision,
        apn=args.apn,
        apn_user=args.apn_user,
        apn_pwd=apn_password(args),
    )
    if req.apn_pwd and not req.apn_user:
        print("provisioning refused: an APN password needs --apn-user", file=sys.stderr)
        return EXIT_FAILED
    if (req.apn_user or req.apn_pwd) and not req.apn:
        print("provisioning refused: APN credentials need --apn", file=sys.stderr)
        return EXIT_FAILED
    if args.device:
        runner, modem_src = run_over_mpremote(args.device), BOARD_MODEM
    else:
        runner = run_on_unix_port(args.fs)
        modem_src = PTY_MODEM % {"dialect": args.dialect, "port": args.modem}
    from cghub.store import is_postgres

    if not is_postgres(args.hub_db):  # a URL names no directory to make
        Path(args.hub_db).parent.mkdir(parents=True, exist_ok=True)
    try:
        record = provision(args.hub_db, runner, modem_src, req)
    except ProvisionError as e:
        print(f"provisioning refused: {e}", file=sys.stderr)
        return EXIT_ALREADY_PROVISIONED if isinstance(e, AlreadyProvisioned) else EXIT_FAILED
    if args.json:
        print(json.dumps(record))
    else:
        print(f"provisioned {record['device_id']} (key id {record['key_id']})")
        print(f"  IMEI  {mask(record['imei'])}   ICCID {mask(record['iccid'])}   IMSI {mask(record['imsi'])}")
        print(f"  lock  {record['outcome']}: {record['reason']}")
        if record["unlocked"]:
            print("  WARNING: UNLOCKED certification unit: it must never ship")
    return 0


if __name__ == "__main__":
    sys.exit(main())
