"""Downlink commands end to end: the hub (cellguard hub on a real UDP port) queues a command, the
firmware on the MicroPython unix port receives it over real UDP, and the command runs exactly once
and reaches the hub's 'done' state -- across the reboot a REBOOT causes.
"""

from __future__ import annotations

import pytest
from cghub import proto as hp
from cghub.server import HubServer
from harness import run_micropython
from hubkit import KEY_ID, ROOT, make_hub

pytestmark = pytest.mark.timeout(300)

# One boot of a device: its littlefs image lives in a file between boots (the chip's flash), REBOOT
# goes through the application's real handler (updates.handler -> sys.exit(0) on the unix port),
# and the flash is saved however the boot ends.
BOOT = """
import sys, vfs
import hostudp, lfsmount
from flashsim import FlashSim
from cellguard import keys, seqstore, message, outbox, runtime, updates
PORT, BOOT, IMG = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
if BOOT == 0:
    flash = lfsmount.fresh(blocks=64)
    keys.provision(bytes.fromhex(ROOT_HEX), 'dev-1', KEY_ID)
else:
    flash = FlashSim.load(IMG)
    vfs.mount(vfs.VfsLfs2(flash), '/fl')
    runtime.set_fs_root('/fl')
handler = updates.handler(None)
def on_command(rec):
    print('CMD', rec[0])
    handler(rec)
counter = seqstore.SequenceCounter('/fl/state/msg_seq')
ch = message.Channel(keys.derive, counter, key_id=keys.key_id(), state_dir='/fl/state')
ob = outbox.Outbox(ch, hostudp.HostUdp(), '127.0.0.1', PORT, base_ms=100, ceiling_ms=400,
                   on_command=on_command)
try:
    ob.hello(0, 'e2e')
    ob.enqueue(b'boot %d' % BOOT)
    t = runtime.ticks_ms()
    while ob.pending() and runtime.ticks_diff(runtime.ticks_ms(), t) < 60000:  # ends at its event; the bound only stops a hang
        ob.poll(50)
    ob.poll(300)  # a resent command datagram, if the hub still has one, arrives after the acks
    print('TIME', ob.time_offset + runtime.time_s())
    print('DONE', ob.pending())
except SystemExit:
    print('RESET')
    raise
finally:
    flash.save(IMG)
"""


def boot(port: int, n: int, img) -> list[str]:
    script = BOOT.replace("ROOT_HEX", repr(ROOT.hex())).replace("KEY_ID", str(KEY_ID))
    return run_micropython(script, heapsize="4M", timeout=150, args=(port, n, img)).splitlines()


def test_reboot_from_the_hub_runs_once_and_is_confirmed(tmp_path):
    hub = make_hub(tmp_path)
    hub.store.queue_command(KEY_ID, hp.reboot_record())
    img = tmp_path / "flash.img"
    outs = []
    with HubServer(hub) as server:
        for n in range(3):
            out = boot(server.port, n, img)
            outs.append(out)
            if "RESET" not in out:
                break
    lines = [x for out in outs for x in out]
    assert lines.count("CMD reboot") == 1, outs  # executed exactly once, not once per boot
    assert "RESET" in outs[0] and outs[-1][-1] == "DONE 0", outs
    assert [r["state"] for r in hub.store.commands(KEY_ID)] == ["done"]
    assert hub.counters["commands_confirmed"] == 1


def test_queued_time_is_delivered_once_and_done(tmp_path):
    hub = make_hub(tmp_path)
    hub.clock = lambda: 1_900_000_000.0  # far from the host's clock: the device shows whose it took
    hub.store.queue_command(KEY_ID, hp.time_record(1_800_000_000))
    with HubServer(hub) as server:
        out = boot(server.port, 0, tmp_path / "flash.img")
        sent = hub.counters["command_datagrams_sent"]
    assert out[-1] == "DONE 0", out
    device_time = int(next(x for x in out if x.startswith("TIME")).split()[1])
    assert abs(device_time - 1_900_000_000) < 60  # the hub's clock at sending, not at queueing
    assert [r["state"] for r in hub.store.commands(KEY_ID)] == ["done"]
    assert sent == 0  # never sealed into a command datagram that waits for a DACK


# The application (app.App) with its real command path (outbox -> App._command); its modem is
# bypassed: the outbox gets a host UDP socket, as the data session would give it one.
APP_BOOT = """
import sys
import hostudp
from cellguard import app, keys, runtime, status
PORT, BOOT, FS = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
runtime.set_fs_root(FS)
if BOOT == 0:
    keys.provision(bytes.fromhex(ROOT_HEX), 'dev-1', KEY_ID)
class Modem:
    session = True
a = app.App(Modem(), '127.0.0.1', PORT, interval_ms=3600000)
a._open_outbox()
print('BOOT INTERVAL', a.interval_ms)
a.box.sock = hostudp.HostUdp()
a.box.base_ms = 100
t = runtime.ticks_ms()
while a.box.pending() and runtime.ticks_diff(runtime.ticks_ms(), t) < 60000:  # ends at its event; the bound only stops a hang
    a.box.poll(50)
a.box.poll(300)
print('INTERVAL', a.interval_ms, runtime.ticks_diff(a._next_reading, runtime.ticks_ms()) <= a.interval_ms)
print('STATE', a.state, keys.provisioned())
for e in status.events():
    print('EVENT', e[1])
"""


def app_boot(port: int, n: int, fs) -> list[str]:
    script = APP_BOOT.replace("ROOT_HEX", repr(ROOT.hex())).replace("KEY_ID", str(KEY_ID))
    return run_micropython(script, heapsize="4M", timeout=150, args=(port, n, fs)).splitlines()


def test_config_interval_reaches_the_app_and_survives_a_reboot(tmp_path):
    hub = make_hub(tmp_path)
    hub.store.queue_command(KEY_ID, hp.config_record(1, 900))
    hub.store.queue_command(KEY_ID, hp.config_record(99, 5))  # a key this firmware does not know
    fs = tmp_path / "fs"
    fs.mkdir()
    with HubServer(hub) as server:
        first = app_boot(server.port, 0, fs)
        second = app_boot(server.port, 1, fs)
    assert "BOOT INTERVAL 3600000" in first and "INTERVAL 900000 True" in first, first
    assert "EVENT config: unknown key 99 ignored" in first, first
    assert "BOOT INTERVAL 900000" in second, second  # persisted like the other CONFIG settings
    assert [r["state"] for r in hub.store.commands(KEY_ID)] == ["done", "done"]


def test_decommission_from_the_hub_wipes_the_keys_through_the_app(tmp_path):
    hub = make_hub(tmp_path)
    hub.store.queue_command(KEY_ID, hp.decommission_record())
    fs = tmp_path / "fs"
    fs.mkdir()
    with HubServer(hub) as server:
        out = app_boot(server.port, 0, fs)
    assert "STATE unprovisioned False" in out, out
    assert not (fs / "keys" / "root").exists()
    assert [r["state"] for r in hub.store.commands(KEY_ID)] == ["done"]
