"""The hub: accepts, acknowledges, rejects with reasons, survives garbage and restarts."""

import socket

import pytest
from cellguard import downlink, message, wire
from cghub import proto as hp
from cghub import server as hubmod
from hubkit import KEY_ID, device_channel, lines, make_hub
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def acks_in(dev, replies):
    out = []
    for r in replies:
        _, _, payload = dev.open(r)
        for rec in downlink.parse(payload):
            if rec[0] == "ack":
                out.extend(downlink.acked(rec[1], rec[2]))
    return out


@pytest.mark.parametrize("mode", [message.ENCRYPT, message.SIGN])
def test_accept_ack_duplicate(tmp_path, mode):
    hub = make_hub(tmp_path)
    dev = device_channel(mode)
    d1 = dev.seal(b"t=21.5")
    d2 = dev.seal(b"t=21.6")
    assert acks_in(dev, hub.handle(d2)) == [1]
    assert sorted(acks_in(dev, hub.handle(d1))) == [0, 1]  # the bitmap also covers seq 1
    assert sorted(acks_in(dev, hub.handle(d1))) == [0, 1]  # a retransmission is acknowledged again...
    assert [x["payload_hex"] for x in lines(hub)] == [b"t=21.6".hex(), b"t=21.5".hex()]  # ...not delivered twice
    assert hub.counters["duplicate"] == 1 and hub.counters["nonce_reuse"] == 0
    assert lines(hub)[0]["mode"] == ("encrypt" if mode else "sign")


def test_rejections_are_counted_with_reasons(tmp_path):
    hub = make_hub(tmp_path)
    dev = device_channel()
    good = dev.seal(b"x")
    forged = bytearray(good)
    forged[-1] ^= 1
    stranger = device_channel(key_id=42).seal(b"x")
    cases = {
        b"": "truncated",
        b"\x41": "truncated",
        good[:5]: "truncated",
        b"\x80" + good[1:]: "unsupported version",
        stranger: "unknown key",
        bytes(forged): "bad tag",
    }
    for data, reason in cases.items():
        assert hub.handle(data) == []
        assert hub.counters["rejected." + reason] >= 1, reason
    assert hub.store.device(KEY_ID)["failures"] == 1
    hub.handle(good)
    held_back = dev.seal(b"late")  # authentic, delivered only after 70 newer ones: outside the window
    for _ in range(70):
        hub.handle(dev.seal(b"later"))
    assert hub.handle(good) != []  # too old for the window, but known: a duplicate, re-acked
    assert hub.handle(held_back) == []
    assert hub.counters["rejected.replayed"] == 1
    assert hub.counters["nonce_reuse"] == 0
    reuse = device_channel()
    reuse.counter.n = 5  # a broken device sealing other bytes under a used sequence number
    hub.handle(reuse.seal(b"other bytes"))
    assert hub.counters["nonce_reuse"] == 1


def test_restart_does_not_reopen_the_window(tmp_path):
    hub = make_hub(tmp_path)
    dev = device_channel()
    old = [dev.seal(b"%d" % i) for i in range(3)]
    for d in old[1:]:
        hub.handle(d)
    hub.store.db.close()
    hub2 = make_hub(tmp_path)  # same database, as after a crash
    for d in old[1:]:
        hub2.handle(d)
    assert lines(hub2) == []  # nothing delivered twice
    hub2.handle(old[0])  # never seen, inside the window: still accepted once
    assert len(lines(hub2)) == 1
    assert hub2.store.accepted_seqs(KEY_ID) == [0, 1, 2]


def test_commands_delivered_until_confirmed(tmp_path):
    hub = make_hub(tmp_path)
    dev = device_channel()
    hub.store.queue_command(KEY_ID, hp.config_record(1, 600))
    hub.store.queue_command(KEY_ID, hp.reboot_record())
    replies = hub.handle(dev.seal(b"r"))
    assert len(replies) == 2
    cmd = replies[1]
    _, seq, payload = dev.open(cmd)
    assert downlink.parse(payload) == [("config", 1, 600), ("reboot",)]
    again = hub.handle(dev.seal(b"r2"))
    assert again[1] == cmd  # resent byte for byte: a replay to the device, not a new command
    with pytest.raises(message.Replayed):
        dev.open(again[1])
    hub.handle(dev.seal(bytes([wire.CTRL_DACK, 0, 0, 0, seq]), control=True))
    assert len(hub.handle(dev.seal(b"r3"))) == 1
    assert {r["state"] for r in hub.store.commands(KEY_ID)} == {"done"}


def test_hello_gets_time_and_unlocked_flag_is_recorded(tmp_path):
    hub = make_hub(tmp_path)
    hub.clock = lambda: 1_800_000_000
    dev = device_channel(unlocked=True)
    (reply,) = hub.handle(dev.seal(bytes([wire.CTRL_HELLO, 1]) + b"1.0.0", control=True))
    recs = downlink.parse(dev.open(reply)[2])
    assert recs[1] == ("time", 1_800_000_000)
    assert lines(hub)[0]["type"] == "hello" and lines(hub)[0]["unlocked"] is True
    assert hub.store.device(KEY_ID)["unlocked_seen"] == 1


def test_mode_policy(tmp_path):
    hub = make_hub(tmp_path, modes="encrypt")
    assert hub.handle(device_channel(message.SIGN).seal(b"x")) == []
    assert hub.counters["rejected.mode not allowed"] == 1


def test_failure_limit_moves_the_key_epoch_instead_of_suspending(tmp_path, monkeypatch):
    """protocol.md section 9: at the hub's limit the next answer carries EPOCH; the device moves, its
    next uplink (new epoch) moves the hub, and the key works on. No person, no lock-out."""
    monkeypatch.setattr(hubmod, "FAILURE_LIMIT", 3)
    hub = make_hub(tmp_path)
    dev = device_channel()
    for _ in range(3):
        bad = bytearray(dev.seal(b"x"))
        bad[-2] ^= 0x40
        assert hub.handle(bytes(bad)) == []
    (reply,) = hub.handle(dev.seal(b"after the limit"))  # still accepted, and asked to move
    recs = downlink.parse(dev.open(reply)[2])
    assert recs[-1] == ("epoch",)
    dev.move_epoch()  # what the outbox does with the record
    (reply,) = hub.handle(dev.seal(b"in epoch 1"))
    assert [r[0] for r in downlink.parse(dev.open(reply)[2])] == ["ack"]  # no EPOCH any more
    row = hub.store.device(KEY_ID)
    assert (row["epoch"], row["failures"], row["suspended"]) == (1, 0, 0)
    assert [x["payload_hex"] for x in lines(hub)][-2:] == [b"after the limit".hex(), b"in epoch 1".hex()]
    assert hub.counters["nonce_reuse"] == 0


def test_forged_datagrams_cost_no_commit_each(tmp_path):
    hub = make_hub(tmp_path)
    dev = device_channel()
    hub.handle(dev.seal(b"first"))
    commits = hub.counters["commits"]
    for i in range(200):
        bad = bytearray(dev.seal(b"x%d" % i))
        bad[-1] ^= 1
        hub.handle(bytes(bad))
    assert hub.counters["commits"] - commits <= 2  # the count is written at most once a second
    assert hub.counters["rejected.bad tag"] == 200


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=80))
def test_garbage_never_crashes(tmp_path, data):
    hub = getattr(test_garbage_never_crashes, "hub", None) or make_hub(tmp_path)
    test_garbage_never_crashes.hub = hub
    assert hub.handle(data) == []
    assert hub.counters["internal_error"] == 0


def test_over_real_udp(tmp_path):
    hub = make_hub(tmp_path)
    dev = device_channel()
    with hubmod.HubServer(hub) as server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(60)  # the ack is the event; the bound only stops a hang
        s.sendto(b"garbage", ("127.0.0.1", server.port))
        s.sendto(dev.seal(b"hello over udp"), ("127.0.0.1", server.port))
        reply, _ = s.recvfrom(2048)
    assert acks_in(dev, [reply]) == [0]
    assert hub.counters["rejected"] == 1
    assert len(reply) == 1 + 1 + 2 + 8  # the smallest ack datagram (protocol.md section 4)


def test_cli_register_queue_stats(tmp_path, capsys):
    db = str(tmp_path / "h.sqlite")
    assert hubmod.main(["register-device", "--db", db, "--key-id", "7", "--device-id", "d", "--root-key-hex", "11" * 32]) == 0
    with pytest.raises(ValueError):
        hubmod.main(["register-device", "--db", db, "--key-id", "7", "--device-id", "e", "--root-key-hex", "11" * 32])
    assert hubmod.main(["queue", "--db", db, "--key-id", "7", "config", "2", "8192"]) == 0
    image = tmp_path / "img.bin"
    image.write_bytes(b"\x00" * 1000)
    assert hubmod.main(["queue", "--db", db, "--key-id", "7", "update-offer", "--image", str(image), "--major", "2"]) == 0
    assert hubmod.main(["stats", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "queued command 2" in out and "d" in out
    recs = hp.parse_records(b"".join(r["record"] for r in hubmod.HubStore(db).commands(7)))
    assert recs[0] == ("config", 2, 8192) and recs[1][0] == "update_offer" and recs[1][4] == 1000


def test_update_chunks_are_served_through_the_hook(tmp_path):
    hub = make_hub(tmp_path)
    image = bytes(range(256)) * 4
    hub.update_provider = lambda key_id, off, n: image[off : off + n]
    dev = device_channel()
    req = bytes([wire.CTRL_CHUNK_REQ]) + (512).to_bytes(4, "big") + (100).to_bytes(2, "big")
    now = [1000.0]
    hub.monotonic = lambda: now[0]
    d = dev.seal(req, control=True)
    (reply,) = hub.handle(d, ("10.0.0.1", 1))
    assert downlink.parse(dev.open(reply)[2]) == [("chunk", 512, image[512:612])]
    now[0] += 2  # from the device's own fresh address, a second later: still no chunk for a duplicate
    assert hub.handle(d, ("10.0.0.1", 1)) == []  # (protocol.md section 4: a replay buys no chunks)


def test_accepted_records_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(hubmod, "ACCEPTED_KEEP", 10)
    hub = make_hub(tmp_path)
    dev = device_channel()
    for _ in range(30):
        hub.handle(dev.seal(b"x"))
    assert hub.store.accepted_seqs(KEY_ID) == list(range(19, 30))


def test_cli_help_runs_as_a_program():
    import subprocess
    import sys


    for args in (["--help"], ["queue", "--db", "x", "--key-id", "1", "--help"]):
        proc = subprocess.run(
            [sys.executable, "-m", "cghub.server", *args], capture_output=True, text=True, timeout=30
        )
        assert proc.returncode == 0, proc.stderr
        assert "usage:" in proc.stdout


def test_cellguard_help_lists_every_hub_subcommand():
    # `cellguard --help` names the hub's subcommands in one line; it once left out new-kek and rotate-kek.
    import re
    import subprocess
    import sys

    def run(*args):
        proc = subprocess.run([sys.executable, "-m", "cgcli", *args], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    subcommands = re.search(r"\{([a-z,-]+)\}", run("hub", "--help")).group(1).split(",")
    hub_line = next(line for line in run("--help").splitlines() if line.split()[:1] == ["hub"])
    assert "new-kek" in subcommands and "rotate-kek" in subcommands
    assert hub_line.split(": ", 1)[1].split(" | ") == subcommands, hub_line


def test_queued_time_rides_the_next_ack_and_is_done(tmp_path):
    hub = make_hub(tmp_path)
    hub.clock = lambda: 1_900_000_000
    dev = device_channel()
    hub.store.queue_command(KEY_ID, hp.time_record(1_800_000_000))
    (reply,) = hub.handle(dev.seal(b"r"))  # no command datagram: TIME waits for no DACK
    recs = downlink.parse(dev.open(reply)[2])
    assert recs[1] == ("time", 1_900_000_000)  # the clock when it is sent, not when it was queued
    assert [r["state"] for r in hub.store.commands(KEY_ID)] == ["done"]
    (reply,) = hub.handle(dev.seal(b"r2"))
    assert [r[0] for r in downlink.parse(dev.open(reply)[2])] == ["ack"]


def test_downlink_sequence_exhaustion_is_refused_not_wrapped(tmp_path):
    hub = make_hub(tmp_path)
    dev = device_channel()
    with hub.store.db:
        hub.store.db.execute("UPDATE devices SET down_seq=? WHERE key_id=?", (hp.MAX_SEQ, KEY_ID))
    assert len(hub.handle(dev.seal(b"last"))) == 1  # the last downlink number, 2^32 - 1
    assert hub.handle(dev.seal(b"beyond")) == []
    assert hub.counters["rejected.downlink sequence exhausted"] == 1
    assert hub.counters["internal_error"] == 0


def test_memory_per_key_is_bounded_and_older_duplicates_come_from_the_store(tmp_path):
    hub = make_hub(tmp_path)
    dev = device_channel()
    sent = [dev.seal(b"%d" % i) for i in range(400)]
    for d in sent:
        hub.handle(d)
    assert len(hub._acc[KEY_ID]) <= hubmod.MEM_ACCEPTED + 16 + 1  # not ACCEPTED_KEEP rows per key
    hub.monotonic = lambda: 10.0**9  # past the once-a-second limit on answers to duplicates
    assert acks_in(dev, hub.handle(sent[5])) == [5]  # known from the store: a duplicate, re-acked
    assert hub.counters["duplicate"] == 1 and hub.counters["nonce_reuse"] == 0


@pytest.mark.parametrize("device_id", ["dev-1", 'quo"te\\back', "ünï\u2028côde", "\x00ctl"])
@pytest.mark.parametrize("at", [1_800_000_000.0, 1_800_000_000.12345, 0.1])
def test_json_line_is_what_json_dumps_writes(device_id, at):
    import json

    from cghub.store import Message

    m = Message(at, device_id, 1_000_001, 300, "reading", "encrypt", True, b"\x00\xff")
    assert m.json_line() == json.dumps(m.as_json(), sort_keys=True) + "\n"
