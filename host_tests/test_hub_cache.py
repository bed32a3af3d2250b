"""The hub caches keys, device rows and pending commands; operators' changes made through another
connection (the CLI, another process) reach a running hub at its next batch."""

import socket

from cellguard import downlink
from cghub import server as hubmod
from hubkit import KEY_ID, device_channel, make_hub


def _exchange(port: int, datagram: bytes) -> list[bytes]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(datagram, ("127.0.0.1", port))
        out = [s.recv(2048)]
        s.settimeout(0.3)
        try:
            while True:
                out.append(s.recv(2048))
        except TimeoutError:
            return out


def test_queue_and_rotation_from_another_connection_reach_the_running_hub(tmp_path):
    hub = make_hub(tmp_path)
    db = str(tmp_path / "hub.sqlite")
    dev = device_channel()
    with hubmod.HubServer(hub) as server:
        assert len(_exchange(server.port, dev.seal(b"cached now"))) == 1
        assert hubmod.main(["queue", "--db", db, "--key-id", str(KEY_ID), "config", "1", "600"]) == 0
        replies = _exchange(server.port, dev.seal(b"next"))
        assert len(replies) == 2, "the queued command did not reach the running hub"
        assert downlink.parse(dev.open(replies[1])[2]) == [("config", 1, 600)]
        # Rotation: the old key id is retired by another connection; the hub stops accepting it.
        assert hubmod.main(["register-device", "--db", db, "--key-id", "77", "--device-id", "dev-1",
                            "--root-key-hex", "22" * 32, "--replace"]) == 0
        new = device_channel(root=bytes.fromhex("22" * 32), key_id=77)
        assert len(_exchange(server.port, new.seal(b"new key"))) == 1
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(dev.seal(b"old key"), ("127.0.0.1", server.port))
        assert len(_exchange(server.port, new.seal(b"sync"))) == 1  # handled in order: the old one is done
    assert hub.counters["rejected.unknown key"] == 1
