"""End to end over real UDP: firmware on the MicroPython unix port -> lossy relay -> hub.

Faults: 30 % loss both ways, duplicates, reordering, and power cuts of the device's littlefs aimed
deliberately, in turn, at a sequence reservation, at the middle of a send (sealing the entry after
its number was taken, spending the budget just before the datagram leaves), at deleting acked
entries, at enqueueing, and at a random flash operation; the device reports where each cut landed
and the tests assert the aimed-at ones were hit. Every reading whose enqueue completed reaches the
hub exactly once; a reading whose enqueue was cut arrives at most once; no sequence number ever
carries two different datagrams, in either direction.
"""

from __future__ import annotations

import json

import pytest
from cghub import proto as hp
from cgsim.udprelay import Faults, Relay
from harness import run_micropython
from hubkit import KEY_ID, ROOT, lines, make_hub

# The device's application loop: readings into the outbox, power cuts of its littlefs, a reboot
# after each. Each cut is aimed at one kind of flash write (TARGETS, in turn): the write wrappers
# below arm the flash when that write starts, so the cut lands inside it, and name the write that was
# in progress when the power went ('any': armed a random number of flash operations ahead).
# `sock` comes from SOCK_SETUP.
DEVICE_LOOP = """
import sys, random
import lfsmount
from flashsim import PowerCut
from cellguard import atomic, keys, seqstore, message, outbox
PORT, N, CUTS, SEED, MODE = [int(a) for a in sys.argv[1:6]]
random.seed(SEED)
flash = lfsmount.fresh(blocks=96)
keys.provision(bytes.fromhex(ROOT_HEX), 'dev-1', KEY_ID)
SOCK_SETUP
TARGETS = ('reserve', 'seal', 'transmit', 'ack', 'enqueue', 'any')
aim = [None]     # the kind of write the next cut waits for
landed = [None]  # the write in progress when the power went

def kind_of(path, data=None):
    if path.endswith('/msg_seq'):
        return 'reserve'      # the sequence reservation (seqstore)
    if path.endswith('/outbox/budget'):
        return 'transmit'     # spent just before the datagram is handed to the socket
    if '/outbox/' in path and data is not None and len(data) and data[0] == 0x50:
        return 'enqueue'      # a plaintext entry
    if '/outbox/' in path and data is not None and len(data) and data[0] == 0x53:
        return 'seal'         # the sealed datagram replacing the plaintext, its number already taken
    if '/outbox/' in path and data is None:
        return 'ack'          # an acknowledged entry deleted
    return 'other'

def tagged(fn, ops):
    def run(path, data=None):
        kind = kind_of(path, data)
        if aim[0] == kind and (data is not None or atomic.exists(path)):  # a remove of nothing: no op
            aim[0] = None
            flash.arm(random.randrange(0, ops), torn=random.random() < 0.5)
        try:
            return fn(path) if data is None else fn(path, data)
        except PowerCut:
            if landed[0] is None:
                landed[0] = kind
            raise
    return run

atomic.write_atomic = tagged(atomic.write_atomic, 3)  # 3+ flash operations each (file, rename)
atomic.remove = tagged(atomic.remove, 1)  # 1+ (the last one may only touch the folder)

def on_command(rec):
    print('CMD', rec[0])

def boot():
    keys._cache = None
    counter = seqstore.SequenceCounter('/fl/state/msg_seq')
    ch = message.Channel(keys.derive, counter, key_id=keys.key_id(), mode=MODE, state_dir='/fl/state')
    return outbox.Outbox(ch, sock, '127.0.0.1', PORT, base_ms=60, ceiling_ms=480, budget=1 << 30,
                         on_command=on_command)

ob = boot()
i = 0
cuts = 0
armed = False
rounds = 0
while True:
    rounds += 1
    if rounds > 20000:
        print('GAVE UP', ob.pending())
        break
    try:
        if cuts < CUTS and not armed:
            target = TARGETS[cuts % len(TARGETS)]
            if target == 'any':
                flash.arm(random.randrange(0, 12), torn=random.random() < 0.5)
            else:
                aim[0] = target
            armed = True
        if i < N and ob.pending() < 6:
            try:
                ob.enqueue(b'r%05d' % i)
                print('Q', i)
            except PowerCut:
                print('U', i)
                i += 1
                raise
            i += 1
        try:
            ob.poll(15)
        except outbox.LinkDown:
            pass  # the modem restarted under the send: its socket reopens itself at the next one
        if i >= N and ob.pending() == 0:
            break
    except PowerCut:
        print('CUT', TARGETS[cuts % len(TARGETS)], landed[0] or 'other')
        landed[0] = None
        cuts += 1
        armed = False
        flash = lfsmount.reboot(flash)
        ob = boot()
print('DONE', cuts, rounds)
"""


def device_script(sock_setup: str) -> str:
    return (
        DEVICE_LOOP.replace("ROOT_HEX", repr(ROOT.hex()))
        .replace("KEY_ID", str(KEY_ID))
        .replace("SOCK_SETUP", sock_setup)
    )


def run_device(port: int, n: int, cuts: int, seed: int, mode: int = 1) -> list[str]:
    script = device_script("import hostudp\nsock = hostudp.HostUdp()")
    out = run_micropython(script, heapsize="4M", timeout=150, args=(port, n, cuts, seed, mode))
    return out.splitlines()


def check_exactly_once(out: list[str], hub, relay: Relay) -> None:
    assert out[-1].startswith("DONE"), out[-5:]
    confirmed = {int(x.split()[1]) for x in out if x.startswith("Q ")}
    uncertain = {int(x.split()[1]) for x in out if x.startswith("U ")}
    got = [bytes.fromhex(x["payload_hex"]) for x in lines(hub) if x["type"] == "reading"]
    ids = [int(p[1:]) for p in got]
    assert len(ids) == len(set(ids)), "a reading was delivered twice"
    assert confirmed <= set(ids), f"lost: {sorted(confirmed - set(ids))}"
    assert set(ids) <= confirmed | uncertain
    # No sequence number ever carried two different datagrams (the nonce is never reused) -- seen
    # both by the hub and on the wire, including datagrams the hub never accepted.
    assert hub.counters["nonce_reuse"] == 0
    by_seq: dict[int, set[bytes]] = {}
    for d in relay.up:
        h = hp.parse_header(d)
        by_seq.setdefault(h.seq, set()).add(d)
    assert all(len(v) == 1 for v in by_seq.values())
    accepted = hub.store.accepted_seqs(KEY_ID)
    assert len(accepted) == len(set(accepted)) == len(lines(hub))
    # The downlink too: every downlink sequence number the hub used carried one datagram only (a
    # resent command datagram is the same bytes), and the hub's committed counter is past them all.
    down: dict[int, set[bytes]] = {}
    for d in relay.down:
        down.setdefault(hp.parse_header(d).seq, set()).add(d)
    assert down and all(len(v) == 1 for v in down.values())
    assert hub.store.device(KEY_ID)["down_seq"] > max(down)


def cuts_landed(out: list[str]) -> list[tuple[str, str]]:
    """(aimed at, landed in) for every power cut the device reported."""
    return [tuple(x.split()[1:3]) for x in out if x.startswith("CUT ")]


def check_cuts_hit(out: list[str], must_hit=("reserve", "seal", "transmit")) -> None:
    cuts = cuts_landed(out)
    aimed = [(a, b) for a, b in cuts if a in must_hit]
    assert all(a == b for a, b in aimed), cuts  # an aimed cut lands inside the write it was aimed at
    hit = {b for _a, b in cuts}
    assert set(must_hit) <= hit, f"power cuts never landed in {set(must_hit) - hit}: {cuts}"


@pytest.mark.parametrize("mode", [1, 0], ids=["encrypt", "sign"])
def test_lossy_link_no_power_cuts(tmp_path, mode):
    hub = make_hub(tmp_path)
    hub.store.queue_command(KEY_ID, hp.config_record(1, 900))
    faults = Faults(loss=0.3, duplicate=0.15, reorder=0.15)
    from cghub.server import HubServer

    with HubServer(hub) as server, Relay(server.port, faults, seed=mode + 7) as relay:
        out = run_device(relay.port, 30, 0, seed=3, mode=mode)
    check_exactly_once(out, hub, relay)
    assert len([x for x in out if x.startswith("Q ")]) == 30
    assert out.count("CMD config") == 1  # resent until confirmed, executed once
    assert relay.faults.loss and len(relay.up) > 30  # retransmissions really happened


@pytest.mark.parametrize("seed", [11, 12])
def test_lossy_link_with_power_cuts(tmp_path, seed):
    hub = make_hub(tmp_path)
    faults = Faults(loss=0.3, duplicate=0.1, reorder=0.1)
    from cghub.server import HubServer

    with HubServer(hub) as server, Relay(server.port, faults, seed=seed) as relay:
        out = run_device(relay.port, 30, 12, seed=seed)
    check_exactly_once(out, hub, relay)
    cuts = int(out[-1].split()[1])
    assert cuts >= 5, out[-1]
    # inside a counter reservation, in the middle of a send (both steps), and deleting acked entries
    check_cuts_hit(out, ("reserve", "seal", "transmit", "ack"))


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(20, 40))
def test_lossy_link_with_power_cuts_soak(tmp_path, seed):
    test_lossy_link_with_power_cuts(tmp_path, seed)


def test_hub_log_is_json_lines(tmp_path):
    hub = make_hub(tmp_path)
    from cghub.server import HubServer

    with HubServer(hub) as server, Relay(server.port) as relay:
        run_device(relay.port, 3, 0, seed=1)
    for line in hub.out.getvalue().splitlines():
        rec = json.loads(line)
        assert rec["device"] == "dev-1" and rec["key_id"] == KEY_ID
