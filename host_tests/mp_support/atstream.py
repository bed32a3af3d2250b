# An in-memory byte stream with the platform UART's four calls, for AT engine tests and benches
# on both runtimes: what the engine writes goes to `responder`, whose answer is queued for reading
# and handed out `chunk` bytes per readinto (so replies arrive split, like from a real UART).


class ScriptedStream:
    def __init__(self, responder=None, chunk=64):
        self.responder = responder
        self.chunk = chunk
        self.written = []
        self._rx = bytearray()
        self._pos = 0

    def feed(self, data):
        if self._pos:
            self._rx = self._rx[self._pos :]
            self._pos = 0
        self._rx += data

    def write(self, buf):
        data = bytes(buf)
        self.written.append(data)
        if self.responder is not None:
            reply = self.responder(data)
            if reply:
                self.feed(reply)
        return len(data)

    def readinto(self, buf):
        n = min(len(buf), self.chunk, len(self._rx) - self._pos)
        if n <= 0:
            return 0
        buf[:n] = self._rx[self._pos : self._pos + n]
        self._pos += n
        return n

    def wait_readable(self, timeout_ms):
        return self._pos < len(self._rx)

    def close(self):
        pass
