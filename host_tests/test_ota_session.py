"""The over-the-air session on the device: offer, chunk requests, a power cut mid-download and a
resume after reboot, whole-image verification, trial boot; refusals keep the old image running."""

import json

import pytest
from boot_kit import device_script, session_kit
from harness import run_micropython


@pytest.fixture(scope="session")
def kit(tmp_path_factory):
    return session_kit(tmp_path_factory)


_OTA = """
import hashlib
from flashsim import PowerCut
from cgboot import update
from cellguard.ota import OtaSession

def hub_offer(name, version, chunk=300):
    data = imgs[name]
    return ("update_offer", version[0], version[1], version[2], len(data), hashlib.sha256(data).digest(), chunk), data

events = []
def session(dev, data, version=(1, 0, 0)):
    requests = []
    def request(off, n, count, iid):
        requests.append((off, n, count, iid))
        return 20
    s = OtaSession(update.UpdateWriter(dev.slots()), version, request,
                   lambda: events.append("reboot"), lambda e, d="": events.append(e), max_datagram=348)
    return s, requests

def serve(s, requests, data, limit=1000):
    # The hub: answer each CHUNK REQ (a window of chunks of the image it names) with IMAGE CHUNKs.
    while requests and limit:
        off, n, count, iid = requests.pop(0)
        for i in range(count):
            at = off + i * n
            if at < len(data):
                s.handle(("image_chunk", iid, at, data[at:at + n]))
        limit -= 1

dev = bootsim.new_device(keys, imgs)
dev.mount()
offer, data = hub_offer("v2", (1, 1, 0))
s, req = session(dev, data)
s.handle(offer)
dev.flash.arm(6)                                    # power fails part-way through the download
try:
    serve(s, req, data)
except PowerCut:
    events.append("cut")
dev.reboot(); dev.mount()
s, req = session(dev, data)
print("resumed", s.resume(), req[0][0] if req else None)
serve(s, req, data)
dev.reboot()
dev.power_on(lambda v, st: None); dev.reboot()      # trial boot of v2; healthy, confirms
# a refused offer (older), and a forged image (rogue key): v2 keeps running
dev.mount()
offer, data = hub_offer("old", (0, 9, 0))
s, req = session(dev, data, (1, 1, 0))
s.handle(offer)
offer, data = hub_offer("rogue", (1, 2, 0))
s.handle(offer)
serve(s, req, data)
dev.reboot()
dev.power_on(lambda v, st: None); dev.reboot()
print(json.dumps({"events": events, "boots": dev.boots[1:]}))
"""


def test_ota_session_resumes_verifies_and_trial_boots(kit):
    script = device_script(kit, ("v1", "v2", "old", "rogue"), _OTA)
    out = run_micropython(script, heapsize="4M", extra_paths=(kit.lib,)).strip().splitlines()
    resumed = out[-2].split()
    assert resumed[1] == "True" and int(resumed[2]) > 0  # picked up where the cut left it
    result = json.loads(out[-1])
    assert result["events"] == [
        "update_offer",
        "cut",
        "update_resume",
        "update_ready",
        "reboot",
        "update_refused",  # 0.9.0 is not newer than 1.1.0
        "update_offer",
        "update_rejected",  # signed by a key the boot part does not trust
    ]
    assert result["boots"] == [["v2", True], ["v2", False]]


class FakeStatus:
    def __init__(self):
        self.values: dict = {}
        self.events: list[str] = []

    def set(self, section, key, value):
        self.values[(section, key)] = value

    def log(self, event):
        self.events.append(event)


def test_update_events_reach_the_status_registry(kit, tmp_path, monkeypatch):
    # CPython, a folder as the filesystem: what the update did, for the console.
    from cellguard import ota
    from cgboot import image, loader, update
    from cgdev import image as image_tool

    fake = FakeStatus()
    monkeypatch.setattr(ota, "_status", fake)
    fs = tmp_path / "fs"
    image_tool.install(kit.images["v1"], fs)
    keys = [image.TrustedKey(*image_tool.public_key(kit.keys[k])) for k in ("ed_a", "ed_b")]
    r = loader.boot(str(fs), keys, None, mount_point=None, log=lambda m: None)
    session = ota.OtaSession(update.UpdateWriter(r.slots), (1, 0, 0), lambda off, n, c, i: 0, lambda: None)
    session.handle(("update_offer", 0, 9, 0, 100, bytes(32), 256))
    assert fake.values[("update", "last")] == "update_refused" and fake.events[-1].startswith(
        "update: update_refused"
    )


_LOSSY = """
import hashlib
from cgboot import update
from cellguard.ota import OtaSession
dev = bootsim.new_device(keys, imgs)
dev.mount()
data = imgs["v2"]
now = [0]
requests = []
events = []
s = OtaSession(update.UpdateWriter(dev.slots()), (1, 0, 0), lambda off, n, c, i: requests.append((off, n, c, i)) or 20,
               lambda: events.append("reboot"), lambda e, d="": events.append(e), clock=lambda: now[0], window=1)
s.handle(("update_offer", 1, 1, 0, len(data), hashlib.sha256(data).digest(), 512))
lost = 0
while requests:
    off, n, c, iid = requests.pop(0)
    if off == 1024 and lost < 2:      # this request (or its answer) is lost, twice
        lost += 1
        now[0] += s._backoff - 1
        s.tick()                      # too early: nothing
        now[0] += 1
        s.tick()                      # the session asks again
        continue
    s.handle(("image_chunk", iid, off, data[off:off + n]))
print(json.dumps({"events": events, "lost": lost}))
"""


def test_lost_chunks_are_asked_for_again(kit):
    out = run_micropython(device_script(kit, ("v1", "v2"), _LOSSY), heapsize="4M", extra_paths=(kit.lib,))
    result = json.loads(out.strip().splitlines()[-1])
    assert result == {"events": ["update_offer", "update_ready", "reboot"], "lost": 2}


def test_app_glue_resumes_an_interrupted_download_once_online(kit, tmp_path):
    # cellguard.updates (the application's command handler): after a reboot mid-download, the
    # first poll() once online asks for the first missing chunk; the hub's chunks then finish it.
    import hashlib

    from cellguard import ota, updates
    from cgboot import image, loader, update
    from cgdev import image as image_tool

    fs = tmp_path / "fs"
    image_tool.install(kit.images["v1"], fs)
    keys = [image.TrustedKey(*image_tool.public_key(kit.keys[k])) for k in ("ed_a", "ed_b")]
    r = loader.boot(str(fs), keys, None, mount_point=None, log=lambda m: None)
    data = kit.images["v2"].read_bytes()
    w = update.UpdateWriter(r.slots)
    w.write(w.offer(len(data), hashlib.sha256(data).digest()), data[:700])  # then the power failed

    class App:
        state = "offline"

        class box:
            sent: list[bytes] = []

            update_budget = 1 << 20

            @staticmethod
            def send_direct(body, charge=True):
                assert not charge  # chunk requests are paid from the update budget
                App.box.sent.append(body)
                return len(body) + 14

            @staticmethod
            def today():
                return 0

            @staticmethod
            def enqueue(body, control=False):
                pass

    resets = []
    on_command = updates.handler(App, reset=lambda: resets.append(1))
    updates.poll(App)
    assert App.box.sent == []  # not online yet: nothing to send through
    App.state = "online"
    updates.poll(App)
    chunk = ota.chunk_for(1024)
    iid = hashlib.sha256(data).digest()[:4]
    count = min(ota.WINDOW_BYTES // chunk, -(-(len(data) - 700) // chunk))  # a window, to the end at most
    assert App.box.sent == [ota.chunk_request_payload(700, chunk, count, iid)]
    off = 700
    while not resets:
        on_command(("image_chunk", iid, off, data[off : off + chunk]))
        off += chunk
    assert loader.decide(r.slots, log=lambda m: None).info.version_str() == "1.1.0+0"
