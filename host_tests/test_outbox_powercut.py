"""A power cut at every flash operation of a first send: in the sequence reservation, the sealed
entry's write, the budget update, and the acknowledgement's delete. After each cut the device
reboots and finishes: the reading is delivered exactly once and no sequence number ever carries two
different datagrams."""


SWEEP = """
import lfsmount
from flashsim import PowerCut
from fakesock import FakeSock
from cellguard import keys, seqstore, message, outbox, crypto
ROOT = bytes(range(32))
derive = lambda label, n: crypto.hkdf(ROOT, b'cellguard/v1', label, n)

class Counter:
    def __init__(self): self.n = 0
    def next(self):
        self.n += 1
        return self.n - 1

def boot(sock):
    keys._cache = None
    c = seqstore.SequenceCounter('/fl/state/msg_seq')
    ch = message.Channel(keys.derive, c, key_id=keys.key_id(), state_dir='/fl/state')
    return outbox.Outbox(ch, sock, 'hub', 1, base_ms=0)

cut = FIRST
while cut < LAST:
    flash = lfsmount.fresh()
    keys.provision(ROOT, 'dev-1', 77)
    sock = FakeSock()
    ob = boot(sock)
    ob.enqueue(b'reading')
    hub = message.Channel(derive, Counter(), send='down')
    flash.arm(cut, torn=(cut % 2 == 1))
    finished = True
    delivered = []
    by_seq = {}
    seen = 0
    rounds = 0
    while True:
        rounds += 1
        assert rounds < 50, 'never delivered'
        try:
            ob.poll(0)
            for d in sock.sent[seen:]:
                seen += 1
                try:
                    flags, seq, p = hub.open(d)
                    delivered.append(p)
                except message.Replayed as e:
                    seq = e.seq
                by_seq.setdefault(seq, set()).add(d)
                sock.inbox.append(hub.seal(bytes([0, seq])))  # ACK seq (1-byte form)
            ob.poll(0)
            if ob.pending() == 0:
                break
        except PowerCut:
            finished = False
            flash = lfsmount.reboot(flash)
            ob = boot(sock)
    assert delivered == [b'reading'], delivered
    assert all(len(v) == 1 for v in by_seq.values()), by_seq
    print(cut, 'cut' if not finished else 'clean')
    if finished:
        break
    cut += 1
"""


def _sweep(mp, first, last):
    out = mp.run(SWEEP.replace("FIRST", str(first)).replace("LAST", str(last)), heapsize="2M", timeout=120)
    return [line.split() for line in out.splitlines()]


def test_cut_at_every_flash_operation_of_a_first_send(mp):
    rows = _sweep(mp, 0, 200)
    assert rows[-1][1] == "clean"  # the sweep ran until a send needed no more operations
    assert len(rows) > 10  # reservation + sealed entry + budget + delete: many cut points
