# The virtual board's "chip": runs on the REAL MicroPython unix port, driven by cgsim.virtual_board.
#
# The unix port has no raw REPL, so the CPython front end speaks the serial protocols (friendly REPL,
# raw REPL, raw paste) on the pty and hands this process only what a board's VM would run:
#   command pipe (front end -> here):  b"<KIND> <len>\n" + payload
#       EXEC    code from the raw REPL (compiled as a module, like pyexec raw mode)
#       SINGLE  one friendly-REPL statement (compiled in 'single' mode, so expressions echo)
#       BOOT    payload b"main" or b"": run boot.py, then main.py if asked (friendly-mode reset)
#   control pipe (here -> front end):
#       b"READY <version>\n"       flash mounted, waiting for commands
#       b"DONE <len>\n" + error    the command finished; error = traceback text or empty
#       b"KBD <n>\n"               the firmware called micropython.kbd_intr(n); and after boot.py, what it set
#   stdin/stdout: the board's console, as on a board (sys.stdin reads what the technician types).
#
# The filesystem is littlefs (vfs.VfsLfs2) mounted at "/" on a block device kept in the image file
# (FileFlash below: same flash semantics as host_tests/mp_support/flashsim.py, but not in the heap).
# argv: image_path block_size block_count command_fd control_fd
import io
import os
import select
import sys
import time

import micropython
import vfs

_IMAGE, _BLOCK_SIZE, _BLOCK_COUNT = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


class FileFlash:
    """NOR flash kept in the image file itself: littlefs's block protocol straight onto the file.

    The image never sits in the VM's heap (a board's flash is not in its RAM either), and every
    program and erase is on disk at once, so killing the virtual board loses nothing that a power
    cut would keep. Flash semantics as in host_tests/mp_support/flashsim.py: erase sets 0xFF, a
    program can only clear bits.
    """

    def __init__(self, f, block_count, block_size):
        self._f = f
        self.block_count = block_count
        self.block_size = block_size
        self._erased = b"\xff" * block_size

    def readblocks(self, block, buf, offset=0):
        self._f.seek(block * self.block_size + offset)
        self._f.readinto(buf)

    def writeblocks(self, block, buf, offset=None):
        if offset is None:  # simple protocol: whole blocks, erase then program
            for i in range(len(buf) // self.block_size):
                self.ioctl(6, block + i)
            offset = 0
        pos = block * self.block_size + offset
        old = bytearray(len(buf))
        self._f.seek(pos)
        self._f.readinto(old)
        for i in range(len(buf)):
            old[i] &= buf[i]
        self._f.seek(pos)
        self._f.write(old)

    def ioctl(self, op, arg):
        if op == 4:
            return self.block_count
        if op == 5:
            return self.block_size
        if op == 6:
            self._f.seek(arg * self.block_size)
            self._f.write(self._erased)
        return 0


def _open_flash():
    size = _BLOCK_SIZE * _BLOCK_COUNT
    try:
        f = open(_IMAGE, "r+b")
        have = f.seek(0, 2)
        if have != size:
            raise ValueError("flash image %s is %d bytes, the board has %d" % (_IMAGE, have, size))
        fresh = False
    except OSError:
        f = open(_IMAGE, "w+b")
        blank = b"\xff" * _BLOCK_SIZE
        for _ in range(_BLOCK_COUNT):
            f.write(blank)
        fresh = True
    bdev = FileFlash(f, _BLOCK_COUNT, _BLOCK_SIZE)
    if fresh:
        vfs.VfsLfs2.mkfs(bdev)
    try:
        fs = vfs.VfsLfs2(bdev)
    except OSError:
        # A board whose filesystem does not mount formats it (as MicroPython's _boot.py does).
        vfs.VfsLfs2.mkfs(bdev)
        fs = vfs.VfsLfs2(bdev)
    return fs


_cmd = open("/proc/self/fd/" + sys.argv[4], "rb")
_ctl = open("/proc/self/fd/" + sys.argv[5], "ab")


def _send(line, payload=b""):
    _ctl.write(line + b"\n" + payload)


class _MicropythonShim:
    """`micropython` as the firmware sees it, with kbd_intr reported to the front end.

    On a board kbd_intr(-1) turns Ctrl-C into an ordinary byte on stdin; the unix port would
    instead restore SIGINT's default action (death). The front end owns Ctrl-C, so it is told.
    """


class HardReset(BaseException):
    """machine.reset(): the chip restarts. The VM process ends and the front end starts a fresh
    one that runs boot.py and main.py, so a trial image really boots through the A/B loader."""


class _MachineShim:
    """`machine` as the firmware sees it: the unix port's own, but reset() restarts the board, and
    Timer is a board's soft timer (its callbacks run while the REPL waits for a command)."""


_timers = []  # the armed Timers; main() runs the due ones between REPL commands


class _Timer:
    ONE_SHOT = 0
    PERIODIC = 1

    def __init__(self, id=-1, mode=PERIODIC, period=1000, callback=None):  # noqa: A002  (a board's signature)
        self.init(mode=mode, period=period, callback=callback)

    def init(self, mode=PERIODIC, period=1000, callback=None):
        self._mode, self._period, self._callback = mode, period, callback
        self._due = time.ticks_add(time.ticks_ms(), period)
        if self not in _timers:
            _timers.append(self)

    def deinit(self):
        if self in _timers:
            _timers.remove(self)


def _run_timers():
    # The soft timers that are due; returns how long until the next one (ms), -1 if none is armed.
    for t in list(_timers):
        if time.ticks_diff(time.ticks_ms(), t._due) >= 0:
            if t._mode == _Timer.PERIODIC:
                t._due = time.ticks_add(t._due, t._period)
            else:
                t.deinit()
            if t._callback is not None:
                t._callback(t)
    if not _timers:
        return -1
    return max(0, min(time.ticks_diff(t._due, time.ticks_ms()) for t in _timers))


_dupterm = [None]  # os.dupterm's stream: it sees the REPL's traffic (here: each command the VM runs)


class _OsShim:
    """`os` as the firmware sees it: the unix port's own, with a board's os.dupterm."""


def _install_os_shim():
    shim = _OsShim()
    for name in dir(os):
        if not name.startswith("__"):
            setattr(shim, name, getattr(os, name))

    def dupterm(stream=None, index=0):
        old, _dupterm[0] = _dupterm[0], stream
        return old

    shim.dupterm = dupterm
    sys.modules["os"] = shim


def _install_machine_shim():
    import machine

    shim = _MachineShim()
    for name in dir(machine):
        if not name.startswith("__"):
            setattr(shim, name, getattr(machine, name))

    def reset():
        raise HardReset()

    shim.reset = reset
    shim.Timer = _Timer
    sys.modules["machine"] = shim


_kbd = [3]  # the interrupt character the firmware last set (Ctrl-C unless it said otherwise)


def _install_shim():
    shim = _MicropythonShim()
    for name in dir(micropython):
        if not name.startswith("__"):
            setattr(shim, name, getattr(micropython, name))

    def kbd_intr(c):
        _kbd[0] = c
        _send(b"KBD %d" % c)

    shim.kbd_intr = kbd_intr
    sys.modules["micropython"] = shim


_interrupted = [False]  # a Ctrl-C that reached the idle VM after the front end had sent it a command


def _run(code, mode, g):
    err = io.StringIO()
    try:
        if _interrupted[0]:  # as on a board: the interrupt is pending and fires at the code's start
            _interrupted[0] = False
            raise KeyboardInterrupt()
        if mode == "exec_file":
            try:
                with open(code) as f:
                    src = f.read()
            except OSError:
                return ""
            exec(compile(src, code, "exec"), g)
        else:
            exec(compile(code, "<stdin>", mode), g)
    except SystemExit:
        pass
    except HardReset:
        raise
    except BaseException as e:  # noqa: B036  (a board's REPL reports KeyboardInterrupt too)
        sys.print_exception(e, err)
    # Drop this script's own frame: a board's traceback starts at the user's code.
    own = '  File "' + sys.argv[0] + '"'
    return "".join(line + "\n" for line in err.getvalue().split("\n") if line and not line.startswith(own))


def main():
    fs = _open_flash()
    vfs.umount("/")
    vfs.mount(fs, "/")
    # The board's UART to the modem is a pty under /dev: keep /dev reachable, nothing else of the host.
    vfs.mount(vfs.VfsPosix("/dev"), "/dev")
    os.chdir("/")
    sys.path[:] = ["", ".frozen", "/lib"]
    _install_shim()
    _install_machine_shim()
    _install_os_shim()
    g = {"__name__": "__main__"}
    _send(b"READY %d.%d.%d" % sys.implementation.version[:3])
    waiting = select.poll()
    waiting.register(_cmd, select.POLLIN)
    done = []
    while True:
        _wait_for_command(waiting, done)
        header = _cmd.readline()
        if not header:
            return
        kind, n = header.split()
        payload = _cmd.read(int(n)) if int(n) else b""
        try:
            err = _command(kind, payload, g)
        except KeyboardInterrupt:  # it came as the program ended, just outside its code (see below)
            err = "KeyboardInterrupt: \n"
        done.append(err.encode())


def _wait_for_command(waiting, done):
    # Reports the last command's end (done: its error text, once), then the REPL waits; a board's
    # soft timers still run. A Ctrl-C can reach an idle VM: the front end sends SIGINT while a
    # command runs, and a command runs until the front end has read its DONE, which may still be in
    # the pipe (a loaded machine). An idle board's REPL takes that Ctrl-C for nothing; here
    # KeyboardInterrupt ended the device script, and the VM with it: the board reset to the friendly
    # REPL under mpremote, which then waited for ever for the raw REPL's answer. Everything from the
    # DONE to the next command is inside the try, and the DONE is sent exactly once. But a Ctrl-C
    # that finds the next command already waiting was sent for it (the front end writes a command
    # before it sends any SIGINT for it): it is kept, and interrupts that command at its start.
    while True:
        try:
            if done:
                e = done.pop()
                _send(b"DONE %d" % len(e), e)
            while not waiting.poll(_run_timers()):
                pass
            return
        except KeyboardInterrupt:
            kept = bool(waiting.poll(0))
            _send(b"INTR %d" % kept)  # for the record (the front end reads no more into it)
            if kept:
                _interrupted[0] = True
                return


def _command(kind, payload, g):
    if _dupterm[0] is not None and kind != b"BOOT":
        _dupterm[0].write(payload)  # on a board the REPL would echo or answer it
    if kind == b"BOOT":
        err = _run("boot.py", "exec_file", g)
        # boot.py ran with Ctrl-C as a plain byte (the front end's default at power-on, as in the
        # custom build docs/flashing.md asks for); from here on it is what the firmware set.
        _send(b"KBD %d" % _kbd[0])
        if not err and payload == b"main":
            err = _run("main.py", "exec_file", g)
        return err
    if kind == b"SINGLE":
        return _run(payload.decode(), "single", g)
    return _run(payload.decode(), "exec", g)


try:
    main()
except HardReset:
    _send(b"RESET")
    sys.exit(0)
