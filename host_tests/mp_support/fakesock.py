# A datagram socket (docs/modem.md, "Datagram sockets") that records what is sent and replays answers.
class FakeSock:
    def __init__(self):
        self.sent = []
        self.inbox = []
        self.fail = False

    def sendto(self, data, host, port):
        if self.fail:
            raise RuntimeError("no network")
        self.sent.append(bytes(data))

    def recvfrom(self, timeout_ms):
        if self.inbox:
            return self.inbox.pop(0), "127.0.0.1", 5683
        return None

    def close(self):
        pass
