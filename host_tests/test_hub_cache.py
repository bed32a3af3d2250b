"""The hub caches keys, device rows and pending commands; operators' changes made through another
connection (the CLI, another process: register, queue, publish) reach a running hub at its next
batch."""

import socket

from cellguard import downlink
from cghub import server as hubmod
from cghub import updates as hub_updates
from hubkit import KEY_ID, amp_image, device_channel, make_hub


def _exchange(port: int, datagram: bytes, expect: int = 1) -> list[bytes]:
    """The hub's answers to one datagram: the `expect` ones awaited (a loaded machine may space
    them out; the bound only stops a hang), then any more that follow within 0.3 s."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(60)
        s.sendto(datagram, ("127.0.0.1", port))
        out = [s.recv(2048) for _ in range(expect)]
        s.settimeout(0.3)
        try:
            while True:
                out.append(s.recv(2048))
        except TimeoutError:
            return out


def test_queue_and_rotation_from_another_connection_reach_the_running_hub(tmp_path):
    hub = make_hub(tmp_path)
    db = str(tmp_path / "hub.sqlite")
    hub.update_provider = hub_updates.provider(hub.store)
    dev = device_channel()
    with hubmod.HubServer(hub) as server:
        assert len(_exchange(server.port, dev.seal(b"cached now"))) == 1
        assert hubmod.main(["queue", "--db", db, "--key-id", str(KEY_ID), "config", "1", "600"]) == 0
        replies = _exchange(server.port, dev.seal(b"next"), expect=2)
        assert len(replies) == 2, "the queued command did not reach the running hub"
        assert downlink.parse(dev.open(replies[1])[2]) == [("config", 1, 600)]
        # A publication from another connection: the next ack carries its offer.
        image = tmp_path / "app.img"
        image.write_bytes(amp_image())
        assert hubmod.main(["publish", "--db", db, "--image", str(image), "--key-id", str(KEY_ID)]) == 0
        ack = _exchange(server.port, dev.seal(b"after the publication"))[0]  # (the command is resent)
        assert [r[0] for r in downlink.parse(dev.open(ack)[2])][-1] == "update_offer"
        # Rotation: the old key id is retired by another connection; the hub stops accepting it.
        assert hubmod.main(["register-device", "--db", db, "--key-id", "77", "--device-id", "dev-1",
                            "--root-key-hex", "22" * 32, "--replace"]) == 0
        new = device_channel(root=bytes.fromhex("22" * 32), key_id=77)
        assert len(_exchange(server.port, new.seal(b"new key"))) == 1
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(dev.seal(b"old key"), ("127.0.0.1", server.port))
        assert len(_exchange(server.port, new.seal(b"sync"))) == 1  # handled in order: the old one is done
    assert hub.counters["rejected.unknown key"] == 1
