"""The outbox and keys on their own: full policy, byte budget, reboots, in-flight bounds, commands."""

from cghub import proto as hp
from hubkit import ROOT

SETUP = """
import os
from cellguard import keys, seqstore, message, outbox, runtime, wire
from fakesock import FakeSock
runtime.set_fs_root(FS)
keys.provision(bytes.fromhex(ROOT_HEX), 'dev-9', 4242)
cmds = []
def make(sock, **kw):
    keys._cache = None
    c = seqstore.SequenceCounter(FS + '/state/msg_seq')
    ch = message.Channel(keys.derive, c, key_id=keys.key_id(), state_dir=FS + '/state')
    return outbox.Outbox(ch, sock, 'hub', 1, base_ms=0, on_command=cmds.append, **kw), ch
"""


def run(runtime, tmp_path, body, **kw):
    # 192K: the whole messaging stack is compiled from source here, on a 64-bit host (viper code
    # included); a board imports it precompiled (.mpy) and with 32-bit objects, in far less.
    kw.setdefault("heapsize", "192K")
    script = (SETUP + body).replace("FS", repr(str(tmp_path))).replace("ROOT_HEX", repr(ROOT.hex()))
    return runtime.run(script, **kw).split("\n")[:-1]


def test_full_policy_evicts_oldest_reading_keeps_control(runtime, tmp_path):
    out = run(
        runtime,
        tmp_path,
        """
s = FakeSock(); s.fail = True
ob, ch = make(s, capacity=3)
ob.enqueue(b'hello', control=True)
for i in range(4):
    ob.enqueue(b'r%d' % i)
print(ob.pending(), ob.stats['evicted'])
names = sorted(os.listdir(FS + '/outbox'))
print(len([n for n in names if n != 'budget']))
ob2, ch = make(s, capacity=2, folder=FS + '/ob2')
ob2.enqueue(b'tamper', control=True)
ob2.enqueue(b'tamper2', control=True)
try:
    ob2.enqueue(b'again', control=True)
except outbox.OutboxFull:
    print('full')
""",
    )
    assert out == ["3 2", "3", "full"]


def test_daily_budget_stops_sending(runtime, tmp_path):
    out = run(
        runtime,
        tmp_path,
        """
s = FakeSock()
ob, ch = make(s, budget=60)
for i in range(5):
    ob.enqueue(b'0123456789abcdef0123456789abcdef')
ob.poll(0)
print(len(s.sent), sum(len(d) for d in s.sent) <= 60, ob.stats['budget_stops'] > 0)
""",
    )
    assert out == ["1 True True"]


def test_failed_send_reports_link_down_and_gives_its_budget_back(runtime, tmp_path):
    """A carrier that fails (the modem restarting, the SIM lock refusing) is reported to the caller
    as LinkDown, costs no budget, and loses nothing: the same sealed bytes go once it is back."""
    out = run(
        runtime,
        tmp_path,
        """
s = FakeSock(); s.fail = True
ob, ch = make(s, budget=100)
ob.enqueue(b'0123456789abcdef0123456789abcdef')
for i in range(10):
    try:
        ob.poll(0)
        print('no error')
    except outbox.LinkDown as e:
        cause = e.cause
print(type(cause).__name__, ob._budget_used, ob.pending())
ob, ch = make(s, budget=100)                  # a reboot: the budget on flash is unspent too
print(ob._budget_used)
s.fail = False
ob.poll(0)
print(len(s.sent), ob._budget_used == len(s.sent[0]), ob.stats['budget_stops'])
""",
    )
    assert out == ["RuntimeError 0 1", "0", "1 True 0"]


def test_reboot_keeps_entries_and_resends_identical_bytes(runtime, tmp_path):
    out = run(
        runtime,
        tmp_path,
        """
s = FakeSock()
ob, ch = make(s, max_inflight=2)
for i in range(4):
    ob.enqueue(b'reading %d' % i)
ob.poll(0)
first = list(s.sent)
print(len(first), ob.pending())
s.sent.clear()
ob, ch = make(s, max_inflight=2)   # reboot: everything from flash
ob.poll(0)
print(s.sent[:2] == first, ob.pending(), ch.counter.peek())
""",
    )
    # two in flight at most; after the reboot the same two datagrams go out again, and the counter
    # resumes from its reservation (16), never below
    assert out == ["2 4", "True 4 16"]


def test_downlink_ack_and_commands(runtime, tmp_path):
    # The hub side is built with the hub's own protocol code, so this is an interop check too.
    keys_down = hp.DirectionKeys.make(ROOT, "down")
    ack = hp.seal(keys_down, hp.FLAG_ENCRYPT, None, 0, hp.ack_record(1, {0}))
    cmd = hp.seal(keys_down, hp.FLAG_ENCRYPT, None, 1, hp.config_record(2, 9999) + hp.decommission_record())
    out = run(
        runtime,
        tmp_path,
        """
s = FakeSock()
ob, ch = make(s)
ob.enqueue(b'a'); ob.enqueue(b'b'); ob.enqueue(b'c')
ob.poll(0)
s.inbox = [bytes.fromhex(ACK), bytes.fromhex(CMD), bytes.fromhex(CMD)]
ob.poll(0)
print(ob.pending(), ob.budget, [c[0] for c in cmds])
dacks = [d for d in s.sent if d[0] & wire.FLAG_CONTROL]
print(len(dacks))
keys.wipe()
print(keys.provisioned())
""".replace("ACK", repr(ack.hex())).replace("CMD", repr(cmd.hex())),
    )
    # a and b acked; the command datagram arrives twice (resent) and runs once, DACKed twice
    assert out == ["1 9999 ['config', 'decommission']", "2", "False"]


def test_keys_derive_matches_the_hub(runtime, tmp_path):
    out = run(runtime, tmp_path, "print(keys.derive(b'cg up ccm key', 16).hex(), keys.device_id(), keys.key_id())")
    assert out == [hp.derive(ROOT, b"cg up ccm key", 16).hex() + " dev-9 4242"]


def test_forgery_limit_moves_the_key_epoch_and_reports_once(runtime, tmp_path):
    out = run(
        runtime,
        tmp_path,
        """
s = FakeSock()
ob, ch = make(s)
ch.fail_limit = 20
ob.enqueue(b'in flight')
ob.poll(0)
before = s.sent[-1]
for i in range(25):
    ob.handle_downlink(b'\\x41\\x05' + bytes(12))   # authentic-looking, wrong tag
print(ch.epoch, ch.failures, ob.pending())
ob.poll(0)
print(s.sent[-2][:3] == before[:3], s.sent[-2] != before)   # same header and sequence, sealed again
resealed = s.sent[-2]
for i in range(45):   # the hub has not answered in epoch 1 yet: the device does not run ahead of it
    ob.handle_downlink(b'\\x41\\x05' + bytes(12))
print(ch.epoch)
# A power cut in the middle of the re-sealing: the epoch file still says so ("1 R").
with open(FS + '/state/msg_epoch', 'w') as f:
    f.write('1 R')
n = len(s.sent)
ob2, ch2 = make(s)   # reboot: the epoch is on flash; what is already in the new epoch stays as it is
ch2.fail_limit = 20
print(ch2.epoch, ch2.reseal_pending)
ob2.poll(0)
print(resealed in s.sent[n:])
""",
    )
    # the 20th moved the epoch (5 more counted in the new one); the reading in flight was sealed
    # again, and one TAMPER event 2 queued
    assert out == ["1 5 2", "True True", "1", "1 False", "True"]


def test_sequence_near_exhaustion_asks_for_a_new_key(runtime, tmp_path):
    out = run(
        runtime,
        tmp_path,
        """
open(FS + '/state/msg_seq', 'w').write(str(0xFFFFFFFF - (1 << 20)))
s = FakeSock()
ob, ch = make(s)
ob.enqueue(b'x')
ob.poll(0)
ob.poll(0)
print(ob.pending(), len(set(d for d in s.sent if d[0] & wire.FLAG_CONTROL)))
""",
    )
    assert out == ["2 1"]  # the reading and the event (sent on the next poll), both awaiting their ACK


def test_exhausted_sequence_refuses_to_seal_without_crashing(runtime, tmp_path):
    out = run(
        runtime,
        tmp_path,
        """
open(FS + '/state/msg_seq', 'w').write(str(0xFFFFFFFF))
s = FakeSock()
ob, ch = make(s)
ob.hello(1, '1.2.3')
ob.enqueue(b'a')
ob.enqueue(b'b')
ob.poll(0)
ob.poll(0)
print(ob.pending(), len(s.sent), ob.stats.get('seal_refused', 0) > 0)
""",
    )
    # the HELLO took the last sequence number (sent, then resent: 2 datagrams); the two readings and
    # the near-exhaustion event wait for a new key; nothing crashed, nothing was reused
    assert out == ["4 2 True"]


def test_hub_configuration_survives_a_reboot(runtime, tmp_path):
    """A budget raised (or a mode chosen) by the hub's CONFIG command holds after a reboot: a unit
    that forgot it would fall back to the default budget, already spent, and go silent."""
    out = run(
        runtime,
        tmp_path,
        """
ob, ch = make(FakeSock())
ob._config(outbox.CONFIG_BUDGET, 100000)
ob._config(outbox.CONFIG_MODE, 0)
ob._config(outbox.CONFIG_BUDGET, 200000)
ob2, ch2 = make(FakeSock())   # a reboot: new objects over the same flash
print(ob2.budget, ch2.mode == message.SIGN)
with open(FS + '/outbox/config', 'ab') as f:
    f.write(b'garbage line\\n')
ob3, ch3 = make(FakeSock())
print(ob3.budget)
""",
    )
    assert out == ["200000 True", "200000"]


def test_budget_is_not_renewed_by_a_reboot_only_by_a_new_day(runtime, tmp_path):
    """A reboot (local clock restarted, the hub's TIME not yet heard again) or a TIME that sets the
    clock back must not grant a fresh daily budget; the next day does."""
    keys_down = hp.DirectionKeys.make(ROOT, "down")
    day = 86400 * 100
    time_dg = hp.seal(keys_down, hp.FLAG_ENCRYPT, None, 0, hp.time_record(day + 5 * 3600))
    out = run(
        runtime,
        tmp_path,
        """
T = [DAY + 3600]
runtime.time_s = lambda: T[0]
s = FakeSock()
ob, ch = make(s, budget=60)
ob.handle_downlink(bytes.fromhex(TIME_DG))   # hub time: 4 h ahead of the local clock
for i in range(3):
    ob.enqueue(b'0123456789abcdef0123456789abcdef')
ob.poll(0)
print(len(s.sent), ob.time_offset)
T[0] = 1000                                  # reboot; the local clock starts again near 0
ob, ch = make(s, budget=60)
ob.poll(0)
print(len(s.sent), ob.time_offset)
T[0] = DAY + 86400 - 4 * 3600 + 10           # with the persisted offset: the next UTC day
ob.poll(0)
print(len(s.sent))
""".replace("TIME_DG", repr(time_dg.hex())).replace("DAY", str(day)),
    )
    assert out == ["1 14400", "1 14400", "2"]


def test_backoff_doubles_to_the_ceiling_with_bounded_jitter(runtime, tmp_path):
    out = run(
        runtime,
        tmp_path,
        """
s = FakeSock()
ob, ch = make(s, budget=1 << 30)
ob.base_ms = 1000
ob.ceiling_ms = 8000
ob.enqueue(b'x')
e = ob._entries[0]
seen = []
for i in range(60):
    t = runtime.ticks_ms()
    ob.send_due()
    t2 = runtime.ticks_ms()
    # send_due read its clock between t and t2 (a loaded machine may pause in there: once the
    # bound was t + 5/4 backoff + 20 ms, which such a pause broke)
    d = runtime.ticks_diff(e.due, t)
    ok = e.backoff * 3 // 4 <= d and runtime.ticks_diff(e.due, t2) <= e.backoff * 5 // 4
    seen.append((e.backoff, ok, d))
    e.due = 0   # due again now: the next send_due() is the next retransmission
print([b for b, ok, d in seen[:6]])
print(all(ok for b, ok, d in seen), len(set(d for b, ok, d in seen[4:])) > 5, len(s.sent))
""",
    )
    # 1 s, doubling, held at the 8 s ceiling; every delay within +-25 %; the jitter really varies
    assert out == ["[1000, 2000, 4000, 8000, 8000, 8000]", "True True 60"]


def test_the_largest_payload_fits_the_hubs_limit_in_any_mode(runtime, tmp_path):
    out = run(
        runtime,
        tmp_path,
        """
s = FakeSock()
ob, ch = make(s)
try:
    ob.enqueue(bytes(outbox.MAX_PAYLOAD + 1))
except ValueError:
    print('refused')
ob.enqueue(bytes(outbox.MAX_PAYLOAD))
ch.set_mode(message.SIGN)   # the longest tag the hub allows, 32 bytes, with the longest header
ch._tx.hmac_tag = 32
ch.key_id = 0xFFFFFFFF
ch._kid, ch._kl = ch.key_id, 4
ch._set_flags()
ch.counter._next = 0xFFFFFF00   # a 4-byte sequence
ob.poll(0)
print(len(s.sent[-1]) <= wire.MAX_DATAGRAM, len(s.sent[-1]))
""",
    )
    assert out == ["refused", "True 511"]
