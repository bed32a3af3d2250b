# A device for the over-the-air tests and benchmarks, on the MicroPython unix port: littlefs on the
# flash simulator, the boot part, the real outbox and update glue (cellguard.updates, cellguard.ota)
# over real UDP to the hub. The test drives it line by line on stdin and reads one JSON line back
# per command, so it waits for events (a condition met), never for wall time:
#   until COND [N]  poll until COND (done, have:N, budget, coverage, idle, delivered, rejected:N,
#                   state:TEXT, any:A,B)
#   clock MS        advance the update session's clock (a gap of MS), then poll once
#   day             the next UTC day (the hub's clock offset and the session's clock move on)
#   link up|down    a coverage gap: datagrams are lost on the air, both ways
#   read N          queue N readings
#   cut N           the flash loses power at its N-th program/erase from now (then: reboot)
#   reboot          restart the chip: remount, boot (trial if an image is pending), resume
#   report          what the device knows
import json
import sys

import boot_trusted
import hostudp
import lfsmount
from cellguard import keys, message, outbox, seqstore, updates
from cgboot import image, loader, slots
from flashsim import PowerCut

PORT = int(sys.argv[1])
ROOT_HEX, KEY_ID, V1 = sys.argv[2], int(sys.argv[3]), sys.argv[4]
BLOCKS = int(sys.argv[5]) if len(sys.argv) > 5 else 40
WINDOW = int(sys.argv[6]) if len(sys.argv) > 6 else 0  # 0: the firmware's own
MAX_DATAGRAM = int(sys.argv[7]) if len(sys.argv) > 7 else 1024  # the modem dialect's (docs/modem.md)
if WINDOW:
    from cellguard import ota

    ota.WINDOW = WINDOW


class _Dialect:
    max_datagram = MAX_DATAGRAM


class _Modem:
    dialect = _Dialect()
TRUSTED = image.trusted(boot_trusted.KEYS)


class Link:
    """The socket, with a switch for a coverage gap; counts what goes on the air (both ways)."""

    def __init__(self):
        self.sock = hostudp.HostUdp()
        self.up = True
        self.bytes = [0, 0]  # sent, received
        self.datagrams = [0, 0]

    def sendto(self, data, host, port):
        if self.up:
            self.bytes[0] += len(data)
            self.datagrams[0] += 1
            self.sock.sendto(data, host, port)

    def recvfrom(self, timeout_ms):
        got = self.sock.recvfrom(timeout_ms)
        if got is None or not self.up:
            return None
        self.bytes[1] += len(got[0])
        self.datagrams[1] += 1
        return got

    def drain(self):
        while self.sock.recvfrom(0) is not None:
            pass

    def close(self):
        pass


class Device:
    def __init__(self):
        self.flash = lfsmount.fresh(blocks=BLOCKS, block_size=4096)
        keys.provision(bytes.fromhex(ROOT_HEX), "dev-1", KEY_ID)
        s = slots.Slots("/fl", TRUSTED)
        s.ensure_dirs()
        with open(V1, "rb") as f:
            data = f.read()
        with open(s.slot_path(0), "wb") as f:
            f.write(data)
        self.link = Link()
        self.now = [0]
        self.rebooted = 0
        self.reboot_requested = False
        self.chunk_bytes = 0  # bytes of chunks handed to the session (for the refetch figure)
        self.readings = 0
        self.boot()

    def boot(self):
        self.result = loader.boot("/fl", TRUSTED, None, None, log=lambda m: None)
        counter = seqstore.SequenceCounter("/fl/state/msg_seq")
        ch = message.Channel(keys.derive, counter, key_id=keys.key_id(), mode=1, state_dir="/fl/state")
        self.state = "online"
        self.modem = _Modem()
        dev = self

        def reset():
            dev.reboot_requested = True

        handler = updates.handler(self, reset=reset, clock=lambda: dev.now[0])

        def on_command(rec):
            if rec[0] == "image_chunk":
                dev.chunk_bytes += len(rec[3])
            handler(rec)

        offset = self.box.time_offset if getattr(self, "box", None) else None
        self.box = outbox.Outbox(ch, self.link, "127.0.0.1", PORT, on_command=on_command)
        if offset is not None:
            self.box.time_offset = offset  # the hub's clock, as a TIME would set it again
        self.box.hello(1 if self.result.trial else 0, self.result.info.version_str())

    def session(self):
        return updates._session[0]

    def step(self):
        self.box.poll(20)
        updates.poll(self)
        if self.result.trial and self.box.stats["acked"]:
            loader.confirm()  # the trial image got a message through: healthy

    def cond(self, what):
        s = self.session()
        state = s.state if s else "idle"
        if what.startswith("any:"):
            return any(self.cond(w) for w in what[4:].split(","))
        if what == "done":
            return self.reboot_requested
        if what.startswith("have:"):
            return self.have() >= int(what[5:])
        if what == "budget":
            return state == "waiting for the update budget"
        if what == "coverage":
            return state == "waiting for coverage"
        if what == "delivered":
            return self.box.pending() == 0
        if what == "idle":
            return not (s and (s.active or s.unsettled)) and self.box.pending() == 0
        if what.startswith("rejected:"):
            return bool(s) and s.stats["rejected_chunks"] >= int(what[9:])
        if what.startswith("state:"):
            return state.startswith(what[6:].replace("_", " "))
        raise ValueError(what)

    def have(self):
        st = self.result.slots.read_state()
        return self.result.slots.slot_bytes(st.candidate) if st else 0

    def report(self):
        s = self.session()
        st = self.result.slots.read_state()
        b = s.budget if s else None
        return {
            "version": self.result.info.version_str(),
            "trial": self.result.trial,
            "mode": st.mode if st else None,
            "have": self.have(),
            "state": s.state if s else "idle",
            "active": bool(s and s.active),
            "ota": s.stats if s else {},
            "outbox": self.box.stats,
            "pending": self.box.pending(),
            "budget_used": self.box._budget_used,
            "update_used": b.used if b else 0,
            "update_limit": b.limit() if b else 0,
            "link": {"bytes": self.link.bytes, "datagrams": self.link.datagrams},
            "chunk_bytes": self.chunk_bytes,
            "rebooted": self.rebooted,
            "reboot_requested": self.reboot_requested,
            "readings": self.readings,
            "page": self.page_line(),
        }

    def page_line(self):
        # What a technician reads on the status page (cellguard.statuspage): the update line.
        from cellguard import status, statuspage

        for line in statuspage.render(status.snapshot()).split("\n"):
            if line.startswith("update"):
                return line
        return None

    def reboot(self):
        import gc

        gc.collect()  # the flash simulator copies its bytes at a reboot
        self.flash = lfsmount.reboot(self.flash)
        self.link.drain()  # what was on its way to the chip before the reset is gone
        self.rebooted += 1
        self.reboot_requested = False
        self.boot()

    def until(self, what, n):
        for _ in range(n):
            if self.cond(what):
                return True
            try:
                self.step()
            except PowerCut:
                self.reboot()
                return "cut"
        return self.cond(what)


dev = Device()
while True:
    line = sys.stdin.readline()
    if not line:
        break
    words = line.split()
    cmd = words[0]
    out = {}
    if cmd == "until":
        out["ok"] = dev.until(words[1], int(words[2]) if len(words) > 2 else 20000)
    elif cmd == "clock":
        dev.now[0] += int(words[1])
        try:
            dev.step()
        except PowerCut:
            dev.reboot()
            out["ok"] = "cut"
    elif cmd == "day":
        dev.box.time_offset += 86400
        dev.now[0] += 86400000  # the session's clock moves on by the same day
    elif cmd == "link":
        dev.link.up = words[1] == "up"
    elif cmd == "read":
        for _ in range(int(words[1])):
            dev.readings += 1
            dev.box.enqueue(b"r%09d" % dev.readings)
    elif cmd == "cut":
        dev.flash.arm(int(words[1]))
    elif cmd == "reboot":
        dev.reboot()
    elif cmd == "quit":
        break
    out["report"] = dev.report()
    print(json.dumps(out))
