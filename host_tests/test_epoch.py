"""No remote lock-out (protocol.md section 9): 2^12 forged downlinks make the device (the firmware on
the MicroPython unix port, with a microcontroller-sized heap) move to the next key epoch, derived
from the same root key; after a reboot it still delivers readings to the real hub over UDP and still
accepts its commands. The hub follows by trying the next epoch, with no person involved."""

import pytest
from cghub import proto as hp
from cghub.server import HubServer
from harness import run_micropython
from hubkit import KEY_ID, ROOT, lines, make_hub

pytestmark = pytest.mark.timeout(300)

BOOT = """
import sys
import hostudp
from cellguard import keys, message, outbox, runtime, seqstore
PORT, BOOT, FS = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
runtime.set_fs_root(FS)
if BOOT == 0:
    keys.provision(bytes.fromhex(ROOT_HEX), 'dev-1', KEY_ID)
got = []
counter = seqstore.SequenceCounter(FS + '/state/msg_seq')
ch = message.Channel(keys.derive, counter, key_id=keys.key_id(), state_dir=FS + '/state')
ob = outbox.Outbox(ch, hostudp.HostUdp(), '127.0.0.1', PORT, base_ms=100, ceiling_ms=400,
                   on_command=got.append)
def deliver():
    t = runtime.ticks_ms()
    while ob.pending() and runtime.ticks_diff(runtime.ticks_ms(), t) < 60000:  # ends at its event; the bound only stops a hang
        ob.poll(50)
ob.enqueue(b'boot %d' % BOOT)
deliver()
if BOOT == 0:
    forged = bytearray(b'\\x41\\x00\\x00' + bytes(10))
    # 2 x 2^12 forged downlinks, each a wrong tag under a fresh sequence, all before the next uplink
    # leaves (one poll; as if it were lost, or the budget spent): the first 2^12 move the epoch, the
    # next do not move it again, since the hub, which has not answered in epoch 1, tries only 0 and 1.
    for i in range(2 * 4096):
        forged[1], forged[2] = i >> 8, i & 0xFF
        ob.handle_downlink(forged)
        if i % 4096 == 4095:
            print('EPOCH', ch.epoch, ch.failures)
    ob.enqueue(b'after the forgeries')
    deliver()
else:
    t = runtime.ticks_ms()
    while not got and runtime.ticks_diff(runtime.ticks_ms(), t) < 60000:  # ends at its event; the bound only stops a hang
        ob.enqueue(b'asking')
        deliver()
    print('CMD', got)
    print('INTERVAL', ob.interval_s)
print('EPOCH', ch.epoch, 'PENDING', ob.pending())
"""


def _boot(port: int, n: int, fs) -> list[str]:
    script = BOOT.replace("ROOT_HEX", repr(ROOT.hex())).replace("KEY_ID", str(KEY_ID))
    return run_micropython(script, heapsize="192K", timeout=180, args=(port, n, fs)).splitlines()


def test_forged_downlinks_move_the_epoch_and_the_device_keeps_working(tmp_path):
    hub = make_hub(tmp_path)
    fs = tmp_path / "fs"
    fs.mkdir()
    with HubServer(hub) as server:
        out0 = _boot(server.port, 0, fs)
        assert out0[:2] == ["EPOCH 1 0", "EPOCH 1 0"] and out0[-1] == "EPOCH 1 PENDING 0", out0
        hub.store.queue_command(KEY_ID, hp.config_record(1, 900))
        out1 = _boot(server.port, 1, fs)  # a reboot: the epoch was on flash
    assert out1[0] == "CMD [('config', 1, 900)]" and out1[1] == "INTERVAL 900", out1
    assert out1[-1] == "EPOCH 1 PENDING 0", out1
    got = [bytes.fromhex(x["payload_hex"]) for x in lines(hub) if x["type"] == "reading"]
    assert got[:3] == [b"boot 0", b"after the forgeries", b"boot 1"]
    tampers = [x for x in lines(hub) if x["type"] == "tamper"]
    assert [bytes.fromhex(x["payload_hex"])[:1] for x in tampers] == [b"\x02"]  # event 2, reported once
    row = hub.store.device(KEY_ID)
    assert row["epoch"] == 1 and row["failures"] == 0
    assert [c["state"] for c in hub.store.commands(KEY_ID)] == ["done"]
    assert hub.counters["epoch_moved"] == 1 and hub.counters["nonce_reuse"] == 0


HUB_ASKS = """
import sys
import hostudp
from cellguard import keys, message, outbox, runtime, seqstore
PORT, FS = int(sys.argv[1]), sys.argv[2]
runtime.set_fs_root(FS)
keys.provision(bytes.fromhex(ROOT_HEX), 'dev-1', KEY_ID)
counter = seqstore.SequenceCounter(FS + '/state/msg_seq')
ch = message.Channel(keys.derive, counter, key_id=keys.key_id(), state_dir=FS + '/state')
ob = outbox.Outbox(ch, hostudp.HostUdp(), '127.0.0.1', PORT, base_ms=100, ceiling_ms=400)
for text in (b'answered with EPOCH', b'in the new epoch'):
    ob.enqueue(text)
    t = runtime.ticks_ms()
    while ob.pending() and runtime.ticks_diff(runtime.ticks_ms(), t) < 60000:  # ends at its event; the bound only stops a hang
        ob.poll(50)
    print('EPOCH', ch.epoch, 'PENDING', ob.pending())
"""


def test_the_hubs_limit_moves_the_epoch_and_the_key_keeps_working(tmp_path, monkeypatch):
    from cghub import server as hubmod
    from hubkit import device_channel

    monkeypatch.setattr(hubmod, "FAILURE_LIMIT", 50)  # 2^20 in the field
    hub = make_hub(tmp_path)
    forger = device_channel(root=bytes(32))  # the key id in clear, any key: every tag is bad
    forger.counter.n = 1000
    for _ in range(50):
        assert hub.handle(forger.seal(b"forged")) == []
    fs = tmp_path / "fs"
    fs.mkdir()
    script = HUB_ASKS.replace("ROOT_HEX", repr(ROOT.hex())).replace("KEY_ID", str(KEY_ID))
    with HubServer(hub) as server:
        out = run_micropython(script, heapsize="192K", timeout=180, args=(server.port, fs)).splitlines()
    # The first reading is still accepted (its ack carries EPOCH, and the device moves); the second,
    # and the TAMPER event 2 the move queues, go in epoch 1, which moves the hub.
    assert out == ["EPOCH 1 PENDING 0", "EPOCH 1 PENDING 0"], out
    got = [bytes.fromhex(x["payload_hex"]) for x in lines(hub) if x["type"] == "reading"]
    assert got == [b"answered with EPOCH", b"in the new epoch"]
    row = hub.store.device(KEY_ID)
    assert (row["epoch"], row["failures"], row["suspended"]) == (1, 0, 0)
