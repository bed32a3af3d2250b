# Test scaffolding: CircuitPython's microcontroller.nvm, reset() and watchdog.
# nvm is a fixed-size byte array (8 KiB here, like many ports), kept in $CELLGUARD_SHIM_NVM when set
# so it survives a "reset" (a new process).
import os

_NVM_SIZE = 8192


class _Nvm:
    def __init__(self, path):
        self._path = path
        self._data = bytearray(b"\xff" * _NVM_SIZE)
        if path:
            try:
                with open(path, "rb") as f:
                    f.readinto(self._data)
            except OSError:
                pass

    def __len__(self):
        return _NVM_SIZE

    def __getitem__(self, index):
        return self._data[index]

    def __setitem__(self, index, value):
        if isinstance(index, slice):
            start = index.start or 0
            stop = _NVM_SIZE if index.stop is None else index.stop
            if stop - start != len(value):
                raise ValueError("Slice and value different lengths.")
        self._data[index] = value
        if self._path:
            with open(self._path, "wb") as f:
                f.write(self._data)


nvm = _Nvm(os.getenv("CELLGUARD_SHIM_NVM"))


class _Watchdog:
    def __init__(self):
        self.timeout = None
        self.mode = None
        self.feeds = 0

    def feed(self):
        if self.mode is None:
            raise ValueError("WatchDogTimer is not currently running")
        self.feeds += 1

    def deinit(self):
        self.mode = None


watchdog = _Watchdog()


def reset():
    print("microcontroller.reset()")
    raise SystemExit(75)
