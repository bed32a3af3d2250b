"""IMEI/SIM lock and production provisioning: one scenario per outcome.

The firmware runs on the MicroPython unix port against the emulated modem on a pty, its storage on
littlefs (VfsLfs2 on the flash simulator, kept in an image file between "boots"). Every refusal is
checked twice: the reason is reported, and the emulator's command record shows that no PDP context
was ever opened.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3

import pytest
from cgdev import provision as prov
from harness import RuntimeFailed, run_micropython
from modem_fixtures import DIALECTS, Sim, driver_script, emulated_modem

pytestmark = pytest.mark.timeout(90)

# The command each dialect opens its data session with.
PDP_COMMANDS = {"nrf91": "AT+CGACT=1", "bg96": "AT+QIACT", "sim7080": "AT+CNACT=0,1", "sara-r4": "AT+CGACT=1"}
FACTORY_PIN = "1234"

MOUNT = """
import vfs
from flashsim import FlashSim
try:
    _flash = FlashSim.load(%(image)r)
except OSError:
    _flash = FlashSim(128, 512)
    vfs.VfsLfs2.mkfs(_flash)
vfs.mount(vfs.VfsLfs2(_flash), '/flash')
runtime.set_fs_root('/flash')
"""
SAVE = "\nvfs.umount('/flash')\n_flash.save(%(image)r)\n"

BOOT_CHECK = """
from cellguard import console, simlock, status
m.init()
lock = simlock.SimLock(m)
try:
    lock.attach('iot.test', registration_timeout_ms=3000)
    print('ATTACHED')
except simlock.LockedOut as e:
    print('LOCKED', e.outcome)
print('OUTCOME', lock.outcome, '|', lock.reason)
print('STATUS', status.get('sim', 'state'))
for line in console.render_status(status.snapshot()).split('\\n'):
    if line.startswith('sim lock'):
        print('CONSOLE', line)
print('EVENTS', len(lock.events))
"""


# The unit loses power when provisioning reaches the step named `at`: "identity" (keys.provision
# has written the root key, not yet the identity beside it) or "binding" (the key and identity are
# stored, the binding is not). What is on the flash by then stays; nothing after it runs.
POWER_CUT = """
import sys
from cellguard import atomic as _atomic, simlock as _simlock
def _power_cut(*args):
    vfs.umount('/flash')
    _flash.save(%(image)r)
    sys.exit(86)
_write = _atomic.write_atomic
def _write_until_cut(path, data):
    if path.endswith('/' + %(at)r):
        _power_cut()
    _write(path, data)
_atomic.write_atomic = _write_until_cut
"""


class Unit:
    """One device: its flash image and its hub; each `run` is one boot of the firmware."""

    def __init__(self, tmp_path):
        self.image = str(tmp_path / "flash.img")
        self.hub_db = tmp_path / "hub.sqlite"

    def run(self, emu, body: str) -> str:
        script = driver_script(emu, MOUNT % {"image": self.image} + body + SAVE % {"image": self.image})
        return run_micropython(script, heapsize="512K", timeout=240)  # app loops end at their events

    def provision(self, emu, cut: str | None = None, **request) -> dict:
        modem_src = "\nm.init()\ndef open_modem():\n    return m\n"
        if cut:
            modem_src += POWER_CUT % {"image": self.image, "at": cut}
        return prov.provision(
            self.hub_db, lambda script: self.run(emu, script), modem_src, prov.Request(**request)
        )

    def boot(self, emu, prelude: str = "") -> dict:
        out = self.run(emu, prelude + BOOT_CHECK)
        lines = {}
        for line in out.splitlines():
            word, _, rest = line.partition(" ")
            if word in ("ATTACHED", "LOCKED", "OUTCOME", "STATUS", "EVENTS", "CONSOLE"):
                lines[word] = rest
        outcome, reason = lines["OUTCOME"].split(" | ")
        return {
            "attached": "ATTACHED" in lines,
            "outcome": outcome,
            "reason": reason,
            "status": lines["STATUS"],
            "console": lines["CONSOLE"],
            "events": int(lines["EVENTS"]),
            "output": out,
        }


def hub_root_key(hub_db) -> bytes:
    """The unit's root key as the hub holds it: sealed in the database, opened with the session's KEK."""
    from cghub.server import HubStore

    store = HubStore(hub_db)
    try:
        newest = store.devices()[-1]  # retired too: a failed run retires the key it registered
        return store.device(newest.key_id).root_key
    finally:
        store.close()


def hub_keys(hub_db, *fields: str) -> list[tuple]:
    """Every key id the hub registered (retired too), as these Device fields, through the store: a
    SQLite file and a PostgreSQL database are read alike."""
    from cghub.server import HubStore

    store = HubStore(hub_db)
    try:
        return [tuple(d[f] for f in fields) for d in store.devices()]
    finally:
        store.close()


def no_data_session(emu) -> bool:
    return not emu.commands_matching(PDP_COMMANDS[emu.dialect])


@pytest.fixture
def unit(tmp_path):
    return Unit(tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
def unit_on_either_store(request, tmp_path):
    """A unit whose hub key store is a SQLite file or a database on a real PostgreSQL server (a
    production line's `--hub-db postgresql://...`): the interrupted-run rules hold on both."""
    unit = Unit(tmp_path)
    if request.param == "postgresql":
        unit.hub_db = request.getfixturevalue("pg_url")
    return unit


def provisioned(unit, dialect="bg96", **request) -> tuple[Sim, str]:
    """Provision a fresh unit with a fresh SIM; returns the SIM (now PIN-locked) and the IMEI."""
    sim = Sim(iccid="89882806660000077778", imsi="901280000077777", pin=FACTORY_PIN)
    with emulated_modem(dialect, sim=sim) as emu:
        record = unit.provision(emu, **request)
        imei = emu.imei
    assert record["outcome"] in ("OK", "UNLOCKED"), record
    return sim, imei


# ---- provisioning ------------------------------------------------------------------------------
@pytest.mark.parametrize("dialect", DIALECTS)
def test_provision_fresh_unit_then_boot_ok(unit, dialect):
    sim = Sim(iccid="89882806660000012346", imsi="901280000012345", pin=FACTORY_PIN)
    with emulated_modem(dialect, sim=sim) as emu:
        record = unit.provision(emu, device_id="unit-1")
        # The SIM is locked with a new 8-digit PIN that only the device can derive.
        assert sim.pin_enabled and sim.pin != FACTORY_PIN and len(sim.pin) == 8 and sim.pin.isdigit()
        assert emu.commands_matching('AT+CPWD="SC"')
    assert record["ok"] and record["outcome"] == "OK"
    assert (record["imei"], record["iccid"], record["imsi"]) == (emu.imei, sim.iccid, sim.imsi)
    # The hub knows the device under the key id the device was given.
    db = sqlite3.connect(unit.hub_db)
    assert db.execute("SELECT device_id, retired FROM devices WHERE key_id=?", (record["key_id"],)).fetchone() == (
        "unit-1",
        0,
    )
    # Power cycle: the SIM asks for its PIN again; the device unlocks it and attaches.
    sim.unlocked = False
    with emulated_modem(dialect, sim=sim) as emu:
        booted = unit.boot(emu)
        assert booted["outcome"] == "OK" and booted["attached"], booted["output"]
        assert emu.commands_matching(PDP_COMMANDS[dialect])
    assert booted["status"] == "OK" and booted["events"] == 0


def test_provisioning_prints_no_secret(unit, tmp_path, capsys):
    sim = Sim(pin=FACTORY_PIN)
    with emulated_modem("bg96", sim=sim) as emu:
        outputs = []
        original = unit.run

        def recording_run(emu_, body):
            out = original(emu_, body)
            outputs.append(out)
            return out

        unit.run = recording_run
        unit.provision(emu)
    root = hub_root_key(unit.hub_db)
    everything = "".join(outputs) + capsys.readouterr().out
    assert root.hex() not in everything and root.hex().upper() not in everything
    assert sim.pin not in everything  # the device PIN never leaves the device
    assert device_pin_from(root) == sim.pin  # the helper the failure tests grep for is the real PIN


def test_reprovision_refused_unless_asked(unit):
    sim, _ = provisioned(unit)
    sim.unlocked = False
    with emulated_modem("bg96", sim=sim) as emu:
        with pytest.raises(prov.ProvisionError, match="already provisioned"):
            unit.provision(emu)
        # Refused before touching the SIM: the PIN is still the one the device derives.
        assert not emu.commands_matching("AT+CPWD")
        old_pin = sim.pin
        record = unit.provision(emu, reprovision=True)
    assert record["outcome"] == "OK" and sim.pin != old_pin  # new root key, new PIN
    db = sqlite3.connect(unit.hub_db)
    # The refused run registered nothing; the re-provisioning retired the old key (never reused)
    # and kept the unit's device id.
    assert db.execute("SELECT key_id, device_id, retired FROM devices ORDER BY key_id").fetchall() == [
        (1, record["device_id"], 1),
        (2, record["device_id"], 0),
    ]


def test_failed_provisioning_leaves_the_unit_as_it_was(unit):
    """A wrong --factory-pin fails the run: the unit stores no key (the hub retires it), so the next
    run, with the right PIN and without --reprovision, starts from the delivery PIN again."""
    sim = Sim(pin=FACTORY_PIN, pin_enabled=False)
    with emulated_modem("bg96", sim=sim) as emu:
        with pytest.raises(prov.ProvisionError, match="error code 16"):
            unit.provision(emu, factory_pin="9999")
        assert sim.pin == FACTORY_PIN and sim.pin_left == 2
        assert "HAS_KEYS False" in unit.run(emu, "from cellguard import keys\nprint('HAS_KEYS', keys.provisioned())")
        record = unit.provision(emu, factory_pin=FACTORY_PIN)
    assert record["outcome"] == "OK" and sim.pin != FACTORY_PIN and sim.pin_left == 3
    sim.unlocked = False
    with emulated_modem("bg96", sim=sim) as emu:
        assert unit.boot(emu)["outcome"] == "OK"
    db = sqlite3.connect(unit.hub_db)
    assert db.execute("SELECT key_id, retired FROM devices ORDER BY key_id").fetchall() == [(1, 1), (2, 0)]


def test_failed_reprovisioning_changes_nothing(unit):
    """A re-provisioning that fails on the unit (here: no SIM in) leaves the unit on its old key and
    the hub with that key live again; the new key id is retired, never used."""
    sim, _ = provisioned(unit)
    sim.unlocked = False
    old_pin = sim.pin
    with emulated_modem("bg96", sim=None) as emu:
        with pytest.raises(prov.ProvisionError, match="no SIM"):
            unit.provision(emu, reprovision=True)
    db = sqlite3.connect(unit.hub_db)
    assert db.execute("SELECT key_id, retired FROM devices ORDER BY key_id").fetchall() == [(1, 0), (2, 1)]
    with emulated_modem("bg96", sim=sim) as emu:
        booted = unit.boot(emu)
    assert booted["outcome"] == "OK" and sim.pin == old_pin


def test_a_failing_check_after_the_commit_keeps_the_run(unit):
    """Once the SIM has the new PIN and the unit the new key, the run has succeeded: a modem error in
    the check after it is reported, and the hub keeps the key the unit now depends on."""
    sim = Sim(pin=FACTORY_PIN)
    with emulated_modem("bg96", sim=sim) as emu:
        emu.on_command("AT+CPWD", lambda: emu.cme_error("AT+GSN", 100))  # the check's IMEI read
        record = unit.provision(emu)
    assert record["outcome"] == "UNKNOWN" and "CmeError (error code 100)" in record["reason"]
    db = sqlite3.connect(unit.hub_db)
    assert db.execute("SELECT key_id, retired FROM devices").fetchall() == [(1, 0)]
    sim.unlocked = False
    with emulated_modem("bg96", sim=sim) as emu:
        assert unit.boot(emu)["outcome"] == "OK"


def test_a_key_without_a_binding_is_not_provisioned(unit):
    """A unit an older, failed run left with a key but no binding: not 'already provisioned', and
    its SIM is changed from its delivery PIN, not from the leftover key's PIN it never got."""
    sim = Sim(pin=FACTORY_PIN, pin_enabled=True)
    with emulated_modem("bg96", sim=sim) as emu:
        unit.run(emu, "from cellguard import keys\nkeys.provision(bytes(range(1, 33)), 'cg-left', 7)")
        record = unit.provision(emu)
    assert record["outcome"] == "OK" and record["device_id"] == "cg-left"
    assert sim.pin != FACTORY_PIN and sim.pin_left == 3


def test_provisioning_never_spends_the_last_pin_retry(unit):
    sim = Sim(pin=FACTORY_PIN, pin_enabled=True, pin_left=1)  # two wrong --factory-pin runs before
    with emulated_modem("bg96", sim=sim) as emu:
        with pytest.raises(prov.ProvisionError, match="one PIN retry left"):
            unit.provision(emu)
        assert not emu.commands_matching("AT+CPIN=") and not emu.commands_matching("AT+CPWD")
    assert sim.pin_left == 1 and sim.pin == FACTORY_PIN


def test_a_power_cut_between_key_and_binding_costs_the_sim_no_retry(unit):
    """Cut after the SIM took the new key's PIN and the unit stored the key, before the binding: the
    re-run tries that key's PIN first (not the delivery PIN, twice, down to one retry from PUK)."""
    sim = Sim(pin=FACTORY_PIN)
    with emulated_modem("bg96", sim=sim) as emu:
        with pytest.raises(RuntimeFailed, match="exited 86"):
            unit.provision(emu, device_id="unit-1", cut="binding")
    assert sim.pin_enabled and sim.pin != FACTORY_PIN  # the SIM holds the new key's PIN
    sim.unlocked = False  # the power comes back
    with emulated_modem("bg96", sim=sim) as emu:
        record = unit.provision(emu, device_id="unit-1")
        assert len(emu.commands_matching("AT+CPIN=")) == 1  # accepted at the first try
    assert record["outcome"] == "OK" and record["device_id"] == "unit-1" and sim.pin_left == 3
    sim.unlocked = False
    with emulated_modem("bg96", sim=sim) as emu:
        assert unit.boot(emu)["outcome"] == "OK"
    db = sqlite3.connect(unit.hub_db)
    assert db.execute("SELECT key_id, device_id, retired FROM devices ORDER BY key_id").fetchall() == [
        (1, "unit-1", 1),
        (2, "unit-1", 0),
    ]


@pytest.mark.parametrize("reprovision", [False, True], ids=["first-run", "reprovision"])
def test_a_power_cut_between_the_pin_change_and_the_key_costs_the_sim_no_puk(unit, reprovision):
    """Cut after the SIM took the new key's PIN, before the unit stored that key (its write is the
    cut): the key staged before the PIN change gives the re-run the SIM's PIN at its first try."""
    sim = Sim(pin=FACTORY_PIN)
    if reprovision:
        with emulated_modem("bg96", sim=sim) as emu:
            unit.provision(emu, device_id="unit-1")
        sim.unlocked = False
    old_pin = sim.pin
    with emulated_modem("bg96", sim=sim) as emu:
        with pytest.raises(RuntimeFailed, match="exited 86"):
            unit.provision(emu, device_id="unit-1", cut="root", reprovision=reprovision)
    assert sim.pin_enabled and sim.pin not in (FACTORY_PIN, old_pin)  # the SIM holds a PIN of a key not stored
    sim.unlocked = False  # the power comes back
    with emulated_modem("bg96", sim=sim) as emu:
        record = unit.provision(emu, device_id="unit-1", reprovision=reprovision)
        assert len(emu.commands_matching("AT+CPIN=")) == 1  # accepted at the first try
    assert record["outcome"] == "OK" and sim.pin_left == 3
    sim.unlocked = False
    with emulated_modem("bg96", sim=sim) as emu:
        assert unit.boot(emu)["outcome"] == "OK"
        assert "STAGED None" in unit.run(emu, "from cellguard import keys\nprint('STAGED', keys.staged_root())")


def test_a_refused_pin_change_stages_nothing(unit):
    sim = Sim(pin="8642", pin_enabled=True)  # not the delivery PIN the run is given
    with emulated_modem("bg96", sim=sim) as emu:
        with pytest.raises(prov.ProvisionError):
            unit.provision(emu, device_id="unit-1")
        out = unit.run(emu, "from cellguard import keys\nprint('STAGED', keys.staged_root(), keys.stored_root())")
    assert "STAGED None None" in out and sim.pin == "8642"


@pytest.mark.parametrize("same_command", [True, False], ids=["same-device-id", "no-device-id"])
def test_a_rerun_after_a_cut_is_the_same_unit_to_the_hub(unit_on_either_store, same_command):
    """Cut before the unit stored its identity: it reports no key, while the hub holds the cut run's
    key live for the device id. A re-run of the same unit (same modem, same SIM) just works, under
    that device id, with or without --device-id; the interrupted run's key is retired."""
    unit = unit_on_either_store
    sim = Sim(pin=FACTORY_PIN)
    with emulated_modem("bg96", sim=sim) as emu:
        with pytest.raises(RuntimeFailed, match="exited 86"):
            unit.provision(emu, device_id="unit-1", cut="identity")
    sim.unlocked = False
    with emulated_modem("bg96", sim=sim) as emu:
        record = unit.provision(emu, **({"device_id": "unit-1"} if same_command else {}))
    assert record["outcome"] == "OK" and record["device_id"] == "unit-1" and sim.pin_left == 3
    assert hub_keys(unit.hub_db, "key_id", "retired") == [(1, 1), (2, 0)]


def test_another_unit_does_not_take_over_an_interrupted_runs_device_id(unit_on_either_store, tmp_path):
    """Another unit given the cut run's device id is refused before its SIM is touched; the cut unit
    keeps its key, and its own re-run (without --device-id) still recovers that id."""
    unit = unit_on_either_store
    sim = Sim(pin=FACTORY_PIN)
    with emulated_modem("bg96", sim=sim) as emu:
        with pytest.raises(RuntimeFailed, match="exited 86"):
            unit.provision(emu, device_id="unit-1", cut="identity")
    (tmp_path / "b").mkdir()
    other = Unit(tmp_path / "b")
    other.hub_db = unit.hub_db
    other_sim = Sim(iccid="89882806660000088882", imsi="901280000088888", pin=FACTORY_PIN)
    with emulated_modem("bg96", sim=other_sim, imei="490154203237518") as emu:
        with pytest.raises(prov.ProvisionError, match="already has a live key"):
            other.provision(emu, device_id="unit-1")
        assert not emu.commands_matching("AT+CPWD")
    assert hub_keys(unit.hub_db, "key_id", "retired") == [(1, 0)]
    sim.unlocked = False
    with emulated_modem("bg96", sim=sim) as emu:
        record = unit.provision(emu)
    assert record["outcome"] == "OK" and record["device_id"] == "unit-1"
    assert hub_keys(unit.hub_db, "key_id", "retired") == [(1, 1), (2, 0)]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_key_store_that_cannot_be_opened_refuses_the_run_before_the_sim_is_touched(unit, request, backend):
    """A key store that fails (here: a SQLite file in a directory that does not exist, a PostgreSQL
    database that does not exist) is a clear refusal on either backend, not a traceback."""
    if backend == "postgresql":
        unit.hub_db = request.getfixturevalue("postgres").uri_for("no_such_database")
    else:
        unit.hub_db = unit.hub_db.parent / "no-such-directory" / "hub.sqlite"
    sim = Sim(pin=FACTORY_PIN)
    with emulated_modem("bg96", sim=sim) as emu:
        with pytest.raises(prov.ProvisionError, match="the hub's key store failed: "):
            unit.provision(emu, device_id="unit-1")
        assert not emu.commands_matching("AT+CPWD")
    assert sim.pin == FACTORY_PIN and sim.pin_left == 3


def test_cli_provisions_against_the_emulated_modem(tmp_path):
    sim = Sim(pin=FACTORY_PIN)
    with emulated_modem("sara-r4", sim=sim) as emu:
        rc = prov.main(
            ["--hub-db", str(tmp_path / "hub.db"), "--modem", emu.path, "--dialect", "sara-r4"]
            + ["--fs", str(tmp_path / "unit"), "--json", "--device-id", "cli-unit"]
        )
    assert rc == 0
    assert (tmp_path / "unit" / "state" / "binding").exists()
    assert sim.pin_enabled and sim.pin != FACTORY_PIN


def test_cli_provisions_into_a_postgresql_key_store(tmp_path, monkeypatch, pg_url):
    """--hub-db postgresql://...: the unit is registered there, its run recorded finished, and no
    directory is made from the URL."""
    monkeypatch.chdir(tmp_path)
    sim = Sim(pin=FACTORY_PIN)
    with emulated_modem("bg96", sim=sim) as emu:
        rc = prov.main(["--hub-db", pg_url, "--modem", emu.path, "--dialect", "bg96",
                        "--fs", str(tmp_path / "unit"), "--json", "--device-id", "cli-unit"])
    assert rc == 0
    assert [p.name for p in tmp_path.iterdir()] == ["unit"]
    assert hub_keys(pg_url, "device_id", "retired") == [("cli-unit", 0)]
    import psycopg

    with psycopg.connect(pg_url) as conn:
        runs = conn.execute("SELECT key_id, device_id, imei, iccid, finished FROM provisioning_runs").fetchall()
    assert runs == [(1, "cli-unit", emu.imei, sim.iccid, 1)]


def test_provisioning_without_device_id_takes_the_id_of_the_service_record(tmp_path, capsys):
    # A unit flashed with --no-provision (its service record names cg-5e71ce0000aa) and provisioned
    # later by the tool alone: the page's device id is the id `service challenge` prints.
    (tmp_path / "unit" / "keys").mkdir(parents=True)
    record = {"device_id": "cg-5e71ce0000aa", "key_id": "00", "key": "00" * 32}
    (tmp_path / "unit" / "keys" / "service.json").write_text(json.dumps(record))
    with emulated_modem("bg96", sim=Sim(pin=FACTORY_PIN)) as emu:
        rc = prov.main(["--hub-db", str(tmp_path / "hub.db"), "--modem", emu.path, "--dialect", "bg96",
                        "--fs", str(tmp_path / "unit"), "--json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["device_id"] == "cg-5e71ce0000aa"
    assert (tmp_path / "unit" / "keys" / "identity").read_text().split("\n", 1)[0] == "cg-5e71ce0000aa"


@pytest.mark.parametrize("source", ["file", "env"])
def test_cli_takes_the_factory_pin_from_a_file_or_the_environment(tmp_path, monkeypatch, capsys, source):
    sim = Sim(pin="8642", pin_enabled=True)
    flags = []
    if source == "file":
        (tmp_path / "pin").write_text("8642\n")
        flags = ["--factory-pin-file", str(tmp_path / "pin")]
    else:
        monkeypatch.setenv(prov.FACTORY_PIN_ENV, "8642")
    with emulated_modem("bg96", sim=sim) as emu:
        rc = prov.main(
            ["--hub-db", str(tmp_path / "hub.db"), "--modem", emu.path, "--fs", str(tmp_path / "unit"), *flags]
        )
    assert rc == 0 and sim.pin != "8642" and sim.pin_left == 3
    assert "8642" not in capsys.readouterr().out


def test_cli_refuses_a_malformed_factory_pin_without_quoting_it(tmp_path, monkeypatch):
    monkeypatch.setenv(prov.FACTORY_PIN_ENV, '12"34')
    with pytest.raises(SystemExit, match="not 4 to 8 digits") as e:
        prov.main(["--hub-db", str(tmp_path / "hub.db"), "--modem", "/dev/null", "--fs", str(tmp_path / "unit")])
    assert '12"34' not in str(e.value)


# ---- one scenario per outcome -------------------------------------------------------------------
def test_unprovisioned(unit):
    with emulated_modem("bg96") as emu:
        booted = unit.boot(emu)
        assert booted["outcome"] == "UNPROVISIONED" and not booted["attached"]
        assert no_data_session(emu)


@pytest.mark.parametrize("dialect", ["bg96", "nrf91"])
def test_sim_swapped(unit, dialect):
    sim, _ = provisioned(unit, dialect)
    other = Sim(iccid="89882806660000099996", imsi="901280000099999", pin="0000", pin_enabled=True)
    with emulated_modem(dialect, sim=other) as emu:
        booted = unit.boot(emu)
        assert booted["outcome"] == "SIM_MISMATCH" and "ICCID" in booted["reason"]
        assert no_data_session(emu)
        # The device's PIN was never tried on the foreign SIM.
        assert not emu.commands_matching("AT+CPIN=") and other.pin_left == 3
    assert booted["status"] == "SIM_MISMATCH" and booted["events"] == 1
    # What the field technician sees on the serial console:
    assert booted["console"].split()[:3] == ["sim", "lock", "SIM_MISMATCH"]
    assert booted["console"].split()[-1] == "SIM_MISMATCH" and "last event 20" in booted["console"]


def test_same_iccid_other_imsi_is_a_mismatch(unit):
    sim, _ = provisioned(unit)
    forged = dataclasses.replace(sim, imsi="901289999999999", unlocked=False)
    with emulated_modem("bg96", sim=forged) as emu:
        booted = unit.boot(emu)
        assert booted["outcome"] == "SIM_MISMATCH" and "IMSI" in booted["reason"]
        assert no_data_session(emu)


def test_modem_swapped(unit):
    sim, imei = provisioned(unit)
    sim.unlocked = False
    with emulated_modem("bg96", sim=sim, imei="490154203237518") as emu:
        booted = unit.boot(emu)
        assert booted["outcome"] == "MODEM_MISMATCH"
        assert no_data_session(emu)
        assert not emu.commands_matching("AT+CPIN=")  # the PIN is not shown to a foreign modem


def test_binding_record_edited_on_littlefs(unit):
    sim, imei = provisioned(unit)
    sim.unlocked = False
    with emulated_modem("bg96", sim=sim) as emu:
        # An attacker with the flash rewrites the IMEI in the binding to match their modem.
        out = unit.run(
            emu,
            "p = '/flash/state/binding'\n"
            "d = open(p, 'rb').read()\n"
            "with open(p, 'wb') as f:\n"
            "    f.write(d.replace(b'imei=%s', b'imei=490154203237518'))\n"
            "print('EDITED', d != open(p, 'rb').read())\n" % imei.encode().decode(),
        )
        assert "EDITED True" in out
        booted = unit.boot(emu)
        assert booted["outcome"] == "BINDING_TAMPERED"
        assert no_data_session(emu)


def test_wrong_pin(unit):
    sim, _ = provisioned(unit)
    sim.pin, sim.unlocked = "11112222", False  # the SIM's PIN was changed behind the device's back
    with emulated_modem("bg96", sim=sim) as emu:
        booted = unit.boot(emu)
        assert booted["outcome"] == "SIM_PIN_WRONG"
        assert no_data_session(emu)
    assert sim.pin_left == 2  # exactly one attempt spent


# A dialect whose modem reports no PIN retry counter (cellguard.dialects.Dialect, the 3GPP base).
NO_RETRY_COUNTER = "m.dialect.pin_retries = lambda _m: None\n"


def test_without_a_retry_counter_a_refused_pin_is_not_tried_again_on_that_sim(unit):
    """After SIM_PIN_WRONG the unit remembers (on flash) that this SIM refused this PIN: where the
    modem cannot say how many attempts are left, the next checks - the app's retries, the next
    boots - spend none of the SIM's remaining attempts."""
    sim, _ = provisioned(unit)
    sim.pin, sim.unlocked = "11112222", False
    with emulated_modem("bg96", sim=sim) as emu:
        assert unit.boot(emu, NO_RETRY_COUNTER)["outcome"] == "SIM_PIN_WRONG"
    for _ in range(2):
        with emulated_modem("bg96", sim=sim) as emu:
            booted = unit.boot(emu, NO_RETRY_COUNTER)
            assert booted["outcome"] == "SIM_PIN_WRONG" and "before" in booted["reason"]
            assert not emu.commands_matching("AT+CPIN=")
            assert no_data_session(emu)
    assert sim.pin_left == 2  # one attempt spent in all


def test_with_a_retry_counter_a_refusing_sim_keeps_its_last_retry(unit):
    """Where the modem reports the counter, the counter guards the SIM: the unit asks again (the
    card that refused may not be the card in the slot now) but never spends the last attempt."""
    sim, _ = provisioned(unit)
    sim.pin, sim.unlocked = "11112222", False
    reasons = []
    for _ in range(3):
        with emulated_modem("bg96", sim=sim) as emu:
            booted = unit.boot(emu)
            assert booted["outcome"] == "SIM_PIN_WRONG" and no_data_session(emu)
            reasons.append(booted["reason"])
    assert reasons == ["SIM rejected the device PIN"] * 2 + ["one PIN retry left: not trying"]
    assert sim.pin_left == 1 and sim.puk_left == 10


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_clone_of_the_iccid_does_not_condemn_the_genuine_sim(unit, dialect):
    """A card copying the bound ICCID is handed the device PIN (the IMSI is readable only after it)
    and refuses it. That refusal must not make the unit refuse the genuine SIM afterwards: the
    retry counter each dialect reports (+CPINR, +QPINC, +SPIC, +UPINCNT) guards the last attempt
    of whichever card is in, and the genuine SIM, back in, is unlocked and used."""
    sim, _ = provisioned(unit, dialect)
    sim.unlocked = False
    clone = sim.clone()
    for expected in ("SIM rejected the device PIN", "SIM rejected the device PIN", "one PIN retry left"):
        with emulated_modem(dialect, sim=clone) as emu:
            booted = unit.boot(emu)
            assert booted["outcome"] == "SIM_PIN_WRONG" and expected in booted["reason"], booted["output"]
            assert no_data_session(emu)
    assert clone.pin_left == 1  # not even the clone is PUK-locked by the unit
    with emulated_modem(dialect, sim=sim) as emu:
        booted = unit.boot(emu)
        assert booted["outcome"] == "OK" and booted["attached"], booted["output"]
        # The genuine card's acceptance cleared the record of the clone's refusal.
        record = "from cellguard import atomic, simlock\nprint('RECORD', atomic.exists(simlock.pin_refused_path()))"
        assert "RECORD False" in unit.run(emu, record)
    assert sim.pin_left == 3


def test_a_pin_refusal_is_forgotten_by_reprovisioning(unit):
    sim, _ = provisioned(unit)
    sim.pin, sim.unlocked = "11112222", False
    with emulated_modem("bg96", sim=sim) as emu:
        assert unit.boot(emu)["outcome"] == "SIM_PIN_WRONG"
        unit.provision(emu, factory_pin="11112222", reprovision=True)  # the service desk
    sim.unlocked = False
    with emulated_modem("bg96", sim=sim) as emu:
        assert unit.boot(emu)["outcome"] == "OK"


def test_one_pin_retry_left_is_not_spent(unit):
    sim, _ = provisioned(unit)
    sim.unlocked, sim.pin_left = False, 1
    with emulated_modem("bg96", sim=sim) as emu:
        booted = unit.boot(emu)
        assert booted["outcome"] == "SIM_PIN_WRONG" and "one PIN retry left" in booted["reason"]
        assert not emu.commands_matching("AT+CPIN=")
        assert no_data_session(emu)
    assert sim.pin_left == 1


def test_puk_locked(unit):
    sim, _ = provisioned(unit)
    sim.unlocked, sim.pin_left = False, 0
    with emulated_modem("bg96", sim=sim) as emu:
        booted = unit.boot(emu)
        assert booted["outcome"] == "SIM_PUK_LOCKED"
        assert no_data_session(emu)


def test_sim_removed_then_reinserted_recovers(unit):
    sim, _ = provisioned(unit)
    sim.unlocked = False
    with emulated_modem("bg96") as emu:
        emu.sim = None  # before the device talks to it
        # The SIM goes back in when the device, after its first refusal, asks for the signal
        # (any command would do): the device keeps checking and recovers by itself.
        emu.on_command("AT+CSQ", lambda: setattr(emu, "sim", sim))
        out = unit.run(
            emu,
            "from cellguard import simlock\n"
            "m.init()\n"
            "lock = simlock.SimLock(m)\n"
            "print('FIRST', lock.check())\n"
            "m.cmd(b'AT+CSQ')\n"
            "print('SECOND', lock.check(), lock.allows_data, len(lock.events))\n",
        )
        assert "FIRST SIM_ABSENT" in out
        assert "SECOND OK True 1" in out  # recovered; the absence stays on record as an event
        assert no_data_session(emu)  # check() alone never opens a data session


def test_tamper_event_persists_across_boots(unit):
    sim, _ = provisioned(unit)
    with emulated_modem("bg96") as emu:
        emu.sim = None
        assert unit.boot(emu)["outcome"] == "SIM_ABSENT"
    with emulated_modem("bg96") as emu:
        out = unit.run(emu, "print('LOG', open('/flash/state/simlock').read().strip())")
    stamp, outcome, reason = out.split("LOG ", 1)[1].strip().split(" ", 2)
    assert int(stamp) > 1_700_000_000 and outcome == "SIM_ABSENT"


def test_stolen_sim_is_useless_in_another_modem(unit):
    """The provisioned SIM, moved into a router's modem, asks for a PIN nobody outside knows."""
    sim, _ = provisioned(unit)
    sim.unlocked = False  # pulled out: power lost
    with emulated_modem("bg96", sim=sim, imei="867530900000009") as thief:
        out = unit.run(
            thief,
            "from cellguard import modem as mod\n"
            "m.init()\n"
            "print('CPIN', m.sim_state())\n"
            "for guess in ('1234', '0000'):\n"
            "    try:\n"
            "        m.enter_pin(guess)\n"
            "        print('UNLOCKED')\n"
            "    except Exception as e:\n"
            "        print('REFUSED', type(e).__name__)\n"
            "try:\n"
            "    m.wait_registered(1500)\n"
            "    print('REGISTERED')\n"
            "except Exception as e:\n"
            "    print('NOT REGISTERED', type(e).__name__)\n",
        )
    assert "CPIN SIM PIN" in out
    assert "UNLOCKED" not in out and "REGISTERED" not in out.replace("NOT REGISTERED", "")
    assert "NOT REGISTERED" in out


def test_certification_unit_reports_unlocked(unit):
    sim, _ = provisioned(unit, unlocked=True)
    assert not sim.pin_enabled  # the SIM is left as delivered
    other = Sim(iccid="89882806660000055550", imsi="901280000055555")
    with emulated_modem("bg96", sim=other) as emu:
        booted = unit.boot(emu)
        # Lab units run with any SIM, and say so: status shows UNLOCKED.
        assert booted["outcome"] == "UNLOCKED" and booted["attached"]
        assert booted["status"] == "UNLOCKED"


def test_binding_record_roundtrip_and_tamper_detection_on_both_runtimes(runtime, tmp_path):
    out = runtime.run(
        "from cellguard import keys, runtime, simlock\n"
        "runtime.set_fs_root(%r)\n"
        "keys.provision(bytes(range(32)), 'dev-9', 9)\n"
        "rec = simlock.encode_binding('350457790123457', '89882806660000012346', '901280000012345', 'dev-9', 9)\n"
        "print(simlock.decode_binding(rec)['imei'])\n"
        "for i in range(len(rec) - 1):\n"
        "    bad = bytearray(rec); bad[i] ^= 1\n"
        "    try:\n"
        "        simlock.decode_binding(bytes(bad)); print('ACCEPTED', i)\n"
        "    except simlock.BindingError:\n"
        "        pass\n"
        "print('PIN', len(simlock.sim_pin()), simlock.sim_pin() == simlock.sim_pin())\n" % str(tmp_path)
    )
    assert "ACCEPTED" not in out
    assert out.split("\n")[0] == "350457790123457"
    assert "PIN 8 True" in out


def test_pin_derivation_is_the_same_on_both_runtimes(tmp_path):
    from harness import run_cpython

    script = (
        "from cellguard import keys, runtime, simlock\n"
        "runtime.set_fs_root(%r)\n"
        "keys.provision(bytes(range(32)), 'dev-1', 1)\n"
        "print(simlock.sim_pin(), simlock.encode_binding('350457790123457', '89882806660000012346', '901280000012345', 'dev-1', 1).hex())\n"
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    mp = run_micropython(script % str(tmp_path / "a"))
    cp = run_cpython(script % str(tmp_path / "b"))
    assert mp == cp
    json.dumps(mp)  # printable


# ---- the lock never risks the SIM ---------------------------------------------------------------
REPEATED_CHECKS = """
from cellguard import simlock
m.init()
lock = simlock.SimLock(m)
for i in range(4):
    print('CHK', lock.check(), '|', lock.reason)
print('EVENTS', len(lock.events))
"""


@pytest.mark.parametrize("sim_pin", ["11112222", "device"])
def test_pin_lock_turned_off_is_refused_without_sending_the_pin(unit, sim_pin):
    """READY with the lock off: a clone matching only the ICCID (other PIN), or our SIM with the
    lock turned off. Re-enabling it would show the device PIN and spend an attempt per check."""
    sim, _ = provisioned(unit)
    if sim_pin != "device":
        sim.pin = sim_pin
    sim.pin_enabled, sim.unlocked, sim.pin_left = False, False, 3
    with emulated_modem("bg96", sim=sim) as emu:
        out = unit.run(emu, REPEATED_CHECKS)
        assert out.count("CHK SIM_LOCK_OFF") == 4, out
        assert not emu.commands_matching('AT+CLCK="SC",1') and not emu.commands_matching("AT+CPIN=")
        assert no_data_session(emu)
    assert sim.pin_left == 3 and not sim.pin_enabled  # not one attempt spent
    assert "EVENTS 1" in out  # one tamper event, not one per check


@pytest.mark.parametrize("code", [10, 13])
def test_sim_gone_during_unlock_is_sim_absent(unit, code):
    sim, _ = provisioned(unit)
    sim.unlocked = False
    with emulated_modem("bg96", sim=sim) as emu:
        emu.cme_error("AT+CPIN=", code)  # SIM not inserted / SIM failure, answering the PIN
        out = unit.run(emu, REPEATED_CHECKS.replace("range(4)", "range(1)"))
        assert "CHK SIM_ABSENT" in out, out
        assert no_data_session(emu)


def test_puk_required_on_unlock_is_puk_locked(unit):
    sim, _ = provisioned(unit)
    sim.unlocked = False
    with emulated_modem("bg96", sim=sim) as emu:
        emu.cme_error("AT+CPIN=", 12)
        out = unit.run(emu, REPEATED_CHECKS.replace("range(4)", "range(1)"))
        assert "CHK SIM_PUK_LOCKED" in out, out
        assert no_data_session(emu)


def test_sim_pulled_mid_unlock_leaks_no_pin_to_the_console(unit):
    sim, _ = provisioned(unit)
    sim.unlocked = False
    with emulated_modem("bg96", sim=sim) as emu:
        emu.on_command("AT+CPIN=", emu.remove_sim_now)
        out = unit.run(
            emu,
            "from cellguard import app, console\n"
            "a = app.App(m, '127.0.0.1', 9, apn='iot.test', retry_ms=100000)\n"
            "a.step(50)\n"
            "print('STATE', a.state, a.lock.outcome)\n"
            "print(console.render_status(console.snapshot()))\n",
        )
        assert no_data_session(emu)
    assert "STATE locked SIM_ABSENT" in out, out
    assert sim.pin not in out


# ---- provisioning failures print no secret ------------------------------------------------------
SECRET_FACTORY_PIN = "90817263"
SECRET_APN_PASSWORD = "s3cr3t-Pa55w0rd"


def device_pin_from(root_key: bytes) -> str:
    """The device PIN as the firmware derives it (HKDF-SHA-256, label cellguard/sim-pin/v1)."""
    import hashlib
    import hmac

    prk = hmac.new(b"cellguard/v1", root_key, hashlib.sha256).digest()
    okm = hmac.new(prk, b"cellguard/sim-pin/v1" + b"\x01", hashlib.sha256).digest()[:8]
    return "%08d" % (int.from_bytes(okm, "big") % 100000000)


@pytest.mark.parametrize(
    "dialect, failing",
    [
        ("bg96", 'AT+CLCK="SC",1'),
        ("bg96", "AT+CPWD"),
        ("nrf91", "AT+CGAUTH"),
        ("bg96", "AT+QICSGP"),
        ("sim7080", "AT+CNCFG"),
    ],
)
def test_failed_provisioning_prints_no_pin_or_password(tmp_path, capsys, caplog, monkeypatch, dialect, failing):
    sim = Sim(pin=SECRET_FACTORY_PIN)
    hub_db = tmp_path / "hub.db"
    monkeypatch.setenv("CELLGUARD_APN_PASSWORD", SECRET_APN_PASSWORD)
    with emulated_modem(dialect, sim=sim) as emu:
        emu.cme_error(failing, 3, count=10)  # +CME ERROR: 3 (operation not allowed), retries too
        rc = prov.main(
            ["--hub-db", str(hub_db), "--modem", emu.path, "--dialect", dialect, "--fs", str(tmp_path / "unit")]
            + ["--factory-pin", SECRET_FACTORY_PIN, "--apn", "iot.test", "--apn-user", "meter"]
        )
        assert emu.commands_matching(failing), "the fault never fired"
    assert rc == prov.EXIT_FAILED
    printed = capsys.readouterr()
    everything = printed.out + printed.err + caplog.text
    root = hub_root_key(hub_db)
    for secret in (SECRET_FACTORY_PIN, SECRET_APN_PASSWORD, device_pin_from(root), root.hex()):
        assert secret not in everything, everything
    # What failed is still said: the error's type, its code, and the command's name.
    assert "CmeError (error code 3) in " + failing.split("=")[0] in printed.err, printed.err


# ---- APN credentials survive a boot -------------------------------------------------------------
APN_COMMANDS = {"bg96": "AT+QICSGP", "sim7080": "AT+CNCFG", "nrf91": "AT+CGAUTH", "sara-r4": "AT+CGAUTH"}

APP_BOOT = """
from cellguard import app
a = app.App(m, '127.0.0.1', 9, apn='iot.test', retry_ms=100000)
print('STATE', a.step(50), a.lock.outcome)
print('PLAIN', %r in open('/flash/state/apn', 'rb').read())
"""


@pytest.mark.parametrize("dialect", ["bg96", "nrf91"])
def test_provisioned_apn_credentials_survive_a_boot(unit, dialect):
    sim, _ = provisioned(unit, dialect, apn="iot.test", apn_user="meter", apn_pwd=SECRET_APN_PASSWORD)
    sim.unlocked = False  # power cycle
    with emulated_modem(dialect, sim=sim) as emu:
        # app.json names the APN only (user and password None), as main.py passes it.
        out = unit.run(emu, APP_BOOT % SECRET_APN_PASSWORD.encode())
        assert "STATE online OK" in out, out
        sent = emu.commands_matching(APN_COMMANDS[dialect])
    assert sent and all("meter" in c and SECRET_APN_PASSWORD in c for c in sent), sent
    assert "PLAIN False" in out  # sealed on the flash, not in clear


def test_edited_apn_record_is_refused_and_said(unit):
    sim, _ = provisioned(unit, "bg96", apn="iot.test", apn_user="meter", apn_pwd=SECRET_APN_PASSWORD)
    sim.unlocked = False
    with emulated_modem("bg96", sim=sim) as emu:
        out = unit.run(
            emu,
            "from cellguard import simlock\n"
            "p = '/flash/state/apn'\n"
            "d = open(p, 'rb').read()\n"
            "with open(p, 'wb') as f:\n"
            "    f.write(d.replace(b'user=meter', b'user=evil'))\n"
            "try:\n"
            "    simlock.load_apn(); print('ACCEPTED')\n"
            "except ValueError as e:\n"
            "    print('REFUSED', e)\n",
        )
    assert "REFUSED APN record fails authentication" in out, out


def test_bad_apn_settings_are_refused_before_the_sim_is_touched(unit):
    sim = Sim(pin=FACTORY_PIN)
    with emulated_modem("bg96", sim=sim) as emu:
        with pytest.raises(prov.ProvisionError, match="APN user holds a line break"):
            unit.provision(emu, apn="iot.test", apn_user="a\nb", apn_pwd="x")
        assert not emu.commands_matching("AT+CPWD") and not emu.commands_matching('AT+CLCK="SC",1')
    assert sim.pin == FACTORY_PIN


# ---- the console shows the lock's history and a certification unit ------------------------------
STATUS_PAGE = """
from cellguard import console, simlock
m.init()
lock = simlock.SimLock(m)
print('BEFORE', console.render_status(console.snapshot()).split(chr(10))[0])
lock.check()
print(console.render_status(console.snapshot()))
print('JSON', json.dumps(console.snapshot()))
"""


def page(out: str) -> tuple[list[str], dict]:
    lines = out.splitlines()
    snap = json.loads([ln for ln in lines if ln.startswith("JSON ")][-1][5:])
    return lines, snap


def test_status_shows_the_last_tamper_event_after_a_reboot(unit):
    sim, _ = provisioned(unit)
    with emulated_modem("bg96") as emu:
        emu.sim = None
        assert unit.boot(emu)["outcome"] == "SIM_ABSENT"
    sim.unlocked = False
    with emulated_modem("bg96", sim=sim) as emu:  # next boot: the right SIM is back, all is well
        out = unit.run(emu, "import json\n" + STATUS_PAGE)
    lines, snap = page(out)
    sim_line = [ln for ln in lines if ln.startswith("sim lock")][0]
    # The state is OK now; the event from the earlier boot is still shown, with its time.
    assert sim_line.split()[:3] == ["sim", "lock", "OK"], sim_line
    assert " last event 20" in sim_line and sim_line.endswith(" UTC SIM_ABSENT"), sim_line
    assert snap["sim"]["state"] == "OK" and snap["sim"]["last_event"] == "SIM_ABSENT"
    assert snap["sim"]["last_event_t"] > 1_700_000_000
    assert "warning" not in snap and UNLOCKED_BANNER not in out


def test_fresh_unit_shows_no_last_event(unit):
    sim, _ = provisioned(unit)
    sim.unlocked = False
    with emulated_modem("bg96", sim=sim) as emu:
        out = unit.run(emu, "import json\n" + STATUS_PAGE)
    lines, snap = page(out)
    assert [ln for ln in lines if ln.startswith("sim lock")][0].split() == ["sim", "lock", "OK"]
    assert "last_event" not in snap["sim"]


UNLOCKED_BANNER = "UNLOCKED CERTIFICATION UNIT - MUST NOT SHIP"


def test_certification_unit_status_carries_the_banner(unit):
    sim, _ = provisioned(unit, unlocked=True)
    with emulated_modem("bg96", sim=sim) as emu:
        out = unit.run(emu, "import json\n" + STATUS_PAGE)
    lines, snap = page(out)
    # The banner is the page's first line, even before the lock has talked to the modem.
    assert "BEFORE " + UNLOCKED_BANNER in out
    page_start = lines.index(UNLOCKED_BANNER)
    assert lines[page_start + 1].startswith("cellguard ")
    assert snap["warning"] == UNLOCKED_BANNER and snap["sim"]["certification_unit"] is True
    assert snap["sim"]["state"] == "UNLOCKED"


# ---- identities that do not validate (docs/provisioning.md, "Identities") ---------------------
@pytest.mark.parametrize("kind", ["IMEI", "ICCID", "IMSI"])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_modem_answering_a_garbage_identity_is_refused_with_a_tamper_event(unit, dialect, kind):
    sim, _ = provisioned(unit, dialect)
    sim.unlocked = False
    with emulated_modem(dialect, sim=sim) as emu:
        emu.identity_answer(kind, "GARBAGE-" + kind)
        booted = unit.boot(emu)
        assert booted["outcome"] == "IDENTITY_INVALID" and kind in booted["reason"], booted["output"]
        assert booted["status"] == "IDENTITY_INVALID" and booted["events"] == 1
        assert no_data_session(emu)
        if kind != "IMSI":  # (the IMSI is read once the SIM has its PIN)
            assert not emu.commands_matching("AT+CPIN=")  # no PIN before the identities check out


@pytest.mark.parametrize("kind,value", [("IMEI", "1"), ("IMEI", "350457790123458"), ("ICCID", "89882806660000012345"),
                                        ("IMSI", "90128000001234")])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_provisioning_refuses_to_bind_an_identity_that_does_not_validate(unit, dialect, kind, value):
    sim = Sim(pin=FACTORY_PIN)
    with emulated_modem(dialect, sim=sim) as emu:
        emu.identity_answer(kind, value)
        with pytest.raises(prov.ProvisionError, match=f"no valid {kind}: not binding it"):
            unit.provision(emu)
        assert not emu.commands_matching('AT+CPWD="SC"')  # the SIM keeps its factory PIN
        out = unit.run(emu, "from cellguard import simlock\nprint('BOUND', simlock.bound())")
    assert "BOUND False" in out and sim.pin == FACTORY_PIN


def test_provisioning_binds_the_imei_not_a_urc_inside_its_reply(unit):
    sim = Sim(pin=FACTORY_PIN)
    with emulated_modem("nrf91", sim=sim) as emu:
        emu.identity_answer("IMEI", emu.imei, urcs=["+CSCON: 1", "%MDMEV: SEARCH STATUS 2"])
        record = unit.provision(emu)
    assert record["ok"] and record["imei"] == emu.imei


def test_a_binding_of_an_invalid_identity_cannot_be_written(mp):
    out = mp.run(
        "from cellguard import simlock\n"
        "for ids in (('1', '89882806660000012346', '901280000012345'),\n"
        "            ('350457790123457', '89882806660000012346', '901280000012345')):\n"
        "    try:\n"
        "        simlock.encode_binding(*ids, device_id='d', key_id=1)\n"
        "        print('ENCODED')\n"
        "    except Exception as e:\n"
        "        print(type(e).__name__, e)\n"
    ).split("\n")
    assert out[0] == "BindingError not a valid IMEI: not binding it"
    assert out[1] == "NotProvisioned root key missing or wiped"  # checked, then on to its MAC (no key in this test)
