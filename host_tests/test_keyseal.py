"""Root keys sealed at rest (cghub.keyseal): the database alone yields no key, register-device needs a
KEK, a rotation rewraps every key while a hub keeps serving, and a PKCS#11 token can hold the KEK."""

import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
from pathlib import Path

import pytest
from cellguard import downlink
from cghub import keyseal
from cghub import server as hubmod
from cghub.store import SqliteStore
from hubkit import DEVICE, KEY_ID, ROOT, device_channel
from hubproc import HubProcess

SOFTHSM_LIBS = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")


@pytest.fixture
def no_env_kek(monkeypatch):
    for name in (keyseal.ENV_KEK, keyseal.ENV_KEK_OLD, keyseal.ENV_KEK_FILE, keyseal.ENV_KEK_OLD_FILE):
        monkeypatch.delenv(name, raising=False)


def _register(db, kek_file, key_id=7, device="d", root=ROOT, *extra) -> int:
    return hubmod.main(
        ["register-device", "--db", str(db), "--key-id", str(key_id), "--device-id", device,
         "--root-key-hex", root.hex(), "--kek-file", str(kek_file), *extra]
    )


def test_a_copy_of_the_database_alone_yields_no_key(tmp_path, no_env_kek):
    kek_file = tmp_path / "secure" / "hub.kek"
    assert hubmod.main(["new-kek", "--kek-file", str(kek_file)]) == 0
    assert kek_file.stat().st_mode & 0o777 == 0o600
    db = tmp_path / "hub.sqlite"
    assert _register(db, kek_file) == 0
    raw = sqlite3.connect(db).execute("SELECT root_key FROM devices").fetchone()[0]
    assert ROOT not in raw and ROOT.hex().encode() not in raw and keyseal.is_wrapped(raw)
    copy = tmp_path / "copy.sqlite"
    with sqlite3.connect(db) as src, sqlite3.connect(copy) as dst:  # a backup, as an operator takes one
        src.backup(dst)
    assert [d.key_id for d in SqliteStore(copy).devices()] == [7]
    with pytest.raises(keyseal.KekError):
        SqliteStore(copy).device(7)  # no KEK at hand
    with pytest.raises(keyseal.KekError):  # another KEK does not open it either
        SqliteStore(copy, keyring=keyseal.Keyring(keyseal.Kek(os.urandom(32)))).device(7)
    ring = keyseal.keyring_from(copy, kek_file)
    assert SqliteStore(copy, keyring=ring).device(7).root_key == ROOT


def test_register_device_refuses_to_run_without_a_kek(tmp_path, no_env_kek, caplog):
    db = tmp_path / "hub.sqlite"
    rc = hubmod.main(["register-device", "--db", str(db), "--key-id", "7", "--device-id", "d", "--root-key-hex", "11" * 32])
    assert rc == 2
    assert "key-encryption key" in caplog.text
    assert SqliteStore(db).devices() == []
    with pytest.raises(keyseal.KekError):  # the library refuses too, before any row is written
        SqliteStore(db).register_device(7, "d", ROOT)
    assert SqliteStore(db).devices() == []


def test_the_kek_comes_from_the_environment_or_a_file_beside_the_db(tmp_path, no_env_kek, monkeypatch):
    db = tmp_path / "hub.sqlite"
    assert keyseal.keyring_from(db) is None
    kek = keyseal.create_kek_file(keyseal.dev_kek_path(db))
    assert keyseal.keyring_from(db).current.id == kek.id
    with pytest.raises(FileExistsError):  # never overwritten: the keys under it would be lost
        keyseal.create_kek_file(keyseal.dev_kek_path(db))
    monkeypatch.setenv(keyseal.ENV_KEK, "ab" * 32)  # the environment wins over the file
    assert keyseal.keyring_from(db).current.id == keyseal.Kek(bytes.fromhex("ab" * 32)).id
    old = keyseal.create_kek_file(tmp_path / "old.kek")
    monkeypatch.setenv(keyseal.ENV_KEK_OLD_FILE, str(tmp_path / "old.kek"))  # a unit's Environment= mid-rotation
    assert [k.id for k in keyseal.keyring_from(db).older] == [old.id]
    loose = tmp_path / "loose.kek"
    loose.write_text("cd" * 32)
    loose.chmod(0o644)
    with pytest.raises(keyseal.KekError, match="readable by others"):
        keyseal.read_kek_file(loose)


def test_a_sealed_key_is_bound_to_its_key_id(tmp_path):
    ring = keyseal.Keyring(keyseal.Kek(os.urandom(32)))
    store = SqliteStore(tmp_path / "hub.sqlite", keyring=ring)
    store.register_device(1, "a", ROOT)
    store.register_device(2, "b", bytes(32))
    with store._tx() as db:  # an attacker with write access swaps the blobs: neither opens
        a, b = (db.execute("SELECT root_key FROM devices WHERE key_id=?", (k,)).fetchone()[0] for k in (1, 2))
        db.execute("UPDATE devices SET root_key=? WHERE key_id=1", (b,))
        db.execute("UPDATE devices SET root_key=? WHERE key_id=2", (a,))
    for k in (1, 2):
        with pytest.raises(keyseal.KekError, match="does not open"):
            store.device(k)
    hub = hubmod.Hub(store)  # a hub refuses the device's datagrams as a counted rejection, not a bug
    assert hub.handle(device_channel(key_id=1).seal(b"x")) == []
    assert hub.counters["rejected.key does not open"] == 1 and hub.counters["internal_error"] == 0


def test_rotating_the_kek_rewraps_every_key_while_a_hub_serves(tmp_path, no_env_kek):
    old_file, new_file = tmp_path / "old.kek", tmp_path / "new.kek"
    old, new = keyseal.create_kek_file(old_file), keyseal.create_kek_file(new_file)
    db = tmp_path / "hub.sqlite"
    for i in range(5):
        assert _register(db, old_file, KEY_ID + i, f"dev-{i}") == 0
    with sqlite3.connect(db) as raw:  # a key from before sealing, stored in clear: rotation seals it too
        raw.execute("INSERT INTO devices (key_id, device_id, root_key) VALUES (?, 'legacy', ?)", (99, bytes(range(32))))
    serving = SqliteStore(db, keyring=keyseal.keyring_from(db, old_file))
    hub = hubmod.Hub(serving)
    dev = device_channel()
    with hubmod.HubServer(hub) as server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(60)  # the answers are the events; the bound only stops a hang
        s.sendto(dev.seal(b"before"), ("127.0.0.1", server.port))
        assert s.recvfrom(2048)
        # The rotation: the new KEK wraps, the old one is still read. The hub is never stopped.
        rc = hubmod.main(["rotate-kek", "--db", str(db), "--kek-file", str(new_file), "--old-kek-file", str(old_file)])
        assert rc == 0
        s.sendto(dev.seal(b"after"), ("127.0.0.1", server.port))
        assert s.recvfrom(2048)
    assert hub.counters["accepted"] == 2 and hub.counters["rejected"] == 0
    blobs = sqlite3.connect(db).execute("SELECT key_id, root_key FROM devices").fetchall()
    assert all(keyseal.kek_id_of(b) == new.id for _, b in blobs)
    only_new = SqliteStore(db, keyring=keyseal.keyring_from(db, new_file))
    assert only_new.device(KEY_ID).root_key == ROOT and only_new.device(99).root_key == bytes(range(32))
    with pytest.raises(keyseal.KekError, match="not at hand"):
        SqliteStore(db, keyring=keyseal.Keyring(old)).device(KEY_ID)
    assert only_new.rewrap_keys() == 0  # idempotent: a second run has nothing to do


def _softhsm(tmp_path):
    lib = next((p for p in SOFTHSM_LIBS if Path(p).exists()), None)
    util = shutil.which("softhsm2-util")
    if lib is None or util is None:
        print("SKIP: SoftHSM2 is not installed (Debian package softhsm2): the PKCS#11 KEK is not tested here")
        pytest.skip("SoftHSM2 not installed (apt-get install softhsm2): PKCS#11 KEK untested on this machine")
    pytest.importorskip("pkcs11", reason="python-pkcs11 not installed (pip install .[pkcs11])")
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    subprocess.run([util, "--init-token", "--free", "--label", "cg", "--pin", "1234", "--so-pin", "5678"],
                   env=env, check=True, capture_output=True)
    return lib, conf


def test_pkcs11_token_holds_the_kek(tmp_path, monkeypatch, no_env_kek):
    lib, conf = _softhsm(tmp_path)
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    import pkcs11

    token = pkcs11.lib(lib).get_token(token_label="cg")
    with token.open(user_pin="1234", rw=True) as session:  # an AES key made on the token, never exported
        session.generate_key(pkcs11.KeyType.AES, 256, label="cellguard-kek", store=True,
                             template={pkcs11.Attribute.EXTRACTABLE: False, pkcs11.Attribute.SENSITIVE: True})
    monkeypatch.setenv("CELLGUARD_PKCS11_PIN", "1234")
    db = tmp_path / "hub.sqlite"
    args = ["--pkcs11-lib", lib, "--pkcs11-token", "cg"]
    assert hubmod.main(["register-device", "--db", str(db), "--key-id", str(KEY_ID), "--device-id", DEVICE,
                        "--root-key-hex", ROOT.hex(), *args]) == 0
    raw = sqlite3.connect(db).execute("SELECT root_key FROM devices").fetchone()[0]
    assert keyseal.is_wrapped(raw) and ROOT not in raw
    ring = keyseal.keyring_from(db, pkcs11={"lib_path": lib, "token_label": "cg", "pin": "1234",
                                            "key_label": "cellguard-kek"})
    hub = hubmod.Hub(SqliteStore(db, keyring=ring))
    assert hub.handle(device_channel().seal(b"via the token")) != []
    assert hub.counters["accepted"] == 1


# ---- the KEK rotation as docs/hub.md section 5 tells the operator to run it --------------------------
def _acked(dev, replies: list[bytes]) -> set[int]:
    records = [rec for reply in replies for rec in downlink.parse(dev.open(reply)[2])]
    return {s for rec in records if rec[0] == "ack" for s in downlink.acked(rec[1], rec[2])}


def _answered(dev, port: int) -> bool:
    """A new reading from a fresh source port (the kernel picks one of the workers by it): True when
    the ack for it comes back."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        s.sendto(dev.seal(b"reading"), ("127.0.0.1", port))
        try:
            return dev.last_seq in _acked(dev, [s.recv(2048)])
        except TimeoutError:
            return False


def test_a_keyring_given_both_keks_wraps_under_the_new_and_opens_either():
    old, new = keyseal.Kek(os.urandom(32)), keyseal.Kek(os.urandom(32))
    ring = keyseal.Keyring(new, [old])
    assert keyseal.kek_id_of(ring.wrap(1, ROOT)) == new.id
    assert ring.unwrap(1, old.wrap(1, ROOT)) == ROOT and ring.unwrap(2, new.wrap(2, ROOT)) == ROOT
    with pytest.raises(keyseal.KeyNotAtHand):
        keyseal.Keyring(old).unwrap(1, new.wrap(1, ROOT))


def test_an_old_kek_file_that_is_not_there_is_skipped_and_named_one_that_is_there_must_read(tmp_path, no_env_kek, monkeypatch):
    # A unit names hub.kek.old for good; it exists only during a rotation (docs/hub.md section 5).
    kek, old = tmp_path / "hub.kek", tmp_path / "hub.kek.old"
    current = keyseal.create_kek_file(kek)
    monkeypatch.setenv(keyseal.ENV_KEK_OLD_FILE, str(old))
    ring = keyseal.keyring_from(kek_file=kek)
    assert ring.older == [] and ring.absent == [str(old)]
    assert f"older KEKs also read: none; {old} absent" in ring.describe()
    previous = keyseal.create_kek_file(old)
    ring = keyseal.keyring_from(kek_file=kek)
    assert [k.id for k in ring.older] == [previous.id] and ring.absent == [] and ring.current.id == current.id
    old.chmod(0o644)  # there, and not to be trusted: refused, as the current KEK's file would be
    with pytest.raises(keyseal.KekError, match="readable by others"):
        keyseal.keyring_from(kek_file=kek)


def test_a_key_under_a_kek_the_hub_lacks_is_a_counted_reject_and_the_others_are_served(tmp_path, no_env_kek, caplog):
    # The situation the old procedure left: a hub reading the old KEK only, `rotate-kek` run under it.
    old_file, new_file = tmp_path / "old.kek", tmp_path / "new.kek"
    keyseal.create_kek_file(old_file)
    new = keyseal.create_kek_file(new_file)
    db = tmp_path / "hub.sqlite"
    loaded, fresh = device_channel(key_id=KEY_ID), device_channel(key_id=KEY_ID + 1, root=bytes(32))
    assert _register(db, old_file, KEY_ID) == 0 and _register(db, old_file, KEY_ID + 1, "dev-2", bytes(32)) == 0
    hub = hubmod.Hub(SqliteStore(db, keyring=keyseal.keyring_from(db, old_file)))
    hub.rejects.interval_s = 3600  # the aggregate line is written when the test flushes it
    assert _acked(loaded, hub.handle(loaded.seal(b"opened before the rotation"))) == {0}
    assert hubmod.main(["rotate-kek", "--db", str(db), "--kek-file", str(new_file), "--old-kek-file", str(old_file)]) == 0
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cellguard.hub"):
        for _ in range(3):  # the fresh device's first datagrams, each in a batch with the loaded one's
            replies = hub.handle_batch([(fresh.seal(b"first"), "fresh"), (loaded.seal(b"still served"), "loaded")])
            assert {addr for _, addr in replies} == {"loaded"}
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # nothing per datagram
        hub.rejects.flush(force=True)
    assert hub.counters["rejected.key not at hand"] == 3 and hub.counters["rejected"] == 3
    assert hub.counters["accepted"] == 4 and hub.counters["internal_error"] == 0
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "key not at hand 3" in line and new.id.hex() in line  # which KEK the hub lacks


def test_the_documented_kek_rotation_leaves_no_worker_unable_to_open_a_key(pg_url, tmp_path, no_env_kek, capsys):
    # docs/hub.md section 5, step by step, on one host: the unit of section 2 (two workers on one port
    # and one database, its KEK files named in its environment) and `systemctl reload` (SIGHUP: the
    # workers restarted one at a time). After every step each device, loaded before or never, gets its
    # ack from whichever worker the kernel picks, and no datagram is refused.
    kek, old, new = tmp_path / "hub.kek", tmp_path / "hub.kek.old", tmp_path / "hub.kek.new"
    keyseal.create_kek_file(kek)
    old_id = keyseal.read_kek_file(kek).id.hex()
    roots = [os.urandom(32) for _ in range(6)]
    fleet = [device_channel(key_id=KEY_ID + i, root=root) for i, root in enumerate(roots)]
    for dev, root in zip(fleet[:5], roots, strict=False):
        assert _register(pg_url, kek, dev.key_id, f"dev-{dev.key_id}", root) == 0
    unit_env = {keyseal.ENV_KEK_FILE: str(kek), keyseal.ENV_KEK_OLD_FILE: str(old)}
    reloads = 0

    def reload() -> None:  # systemctl reload cellguard-hub
        nonlocal reloads
        reloads += 1
        hub.proc.send_signal(signal.SIGHUP)
        hub.wait_for("hub reload done", count=reloads)

    with HubProcess(["--db", pg_url], workers=2, env=unit_env) as hub:
        hub.wait_for(f"wrapped under KEK {old_id}; older KEKs also read: none; {old} absent", count=2)
        assert _answered(fleet[0], hub.port)  # fleet[0] is loaded (cached) before the rotation, the others not
        # 1. a new KEK
        assert hubmod.main(["new-kek", "--kek-file", str(new)]) == 0
        new_id = keyseal.read_kek_file(new).id.hex()
        # 2. the current KEK becomes the old one, the new one the current, and the workers reload
        os.link(kek, old)
        os.replace(new, kek)
        reload()
        hub.wait_for(f"wrapped under KEK {new_id}; older KEKs also read: {old_id}", count=2)
        assert all(_answered(dev, hub.port) for dev in fleet[:5])
        # 3. registration (provisioning) wraps under the new KEK
        assert _register(pg_url, kek, fleet[5].key_id, "dev-new", roots[5]) == 0
        # 4. every stored key rewrapped under the new KEK (refused, saying which KEK, without the old one)
        assert hubmod.main(["rotate-kek", "--db", pg_url, "--kek-file", str(kek)]) == 2
        both = ["--kek-file", str(kek), "--old-kek-file", str(old)]
        assert hubmod.main(["rotate-kek", "--db", pg_url, *both]) == 0
        assert all(_answered(dev, hub.port) for dev in fleet for _ in range(2))
        # 5. once `rotate-kek` has nothing left to do, the old KEK is retired and the workers reload
        capsys.readouterr()
        assert hubmod.main(["rotate-kek", "--db", pg_url, *both]) == 0
        assert "rewrapped 0 root key(s)" in capsys.readouterr().out
        os.replace(old, tmp_path / "hub.kek.retired")
        reload()
        hub.wait_for(f"wrapped under KEK {new_id}; older KEKs also read: none; {old} absent", count=2)
        assert all(_answered(dev, hub.port) for dev in fleet for _ in range(2))
        assert hub.stop() == 0
    assert not [x for x in hub.lines if "internal error" in x or "rejected" in x or "halted" in x]
