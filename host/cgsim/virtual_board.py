"""The virtual board: a pty that behaves like a MicroPython board's USB serial port.

mpremote (and a person with a terminal) talk to it exactly as to a Pico W: the friendly REPL, the raw
REPL (Ctrl-A, `raw REPL; CTRL-B to exit`, `OK` + output + Ctrl-D + error + Ctrl-D + `>`), raw paste
(Ctrl-E A Ctrl-A with window flow control), Ctrl-B, Ctrl-C, Ctrl-D soft reset. The code runs on the
REAL MicroPython unix port (cgsim/vboard_device.py), whose filesystem is littlefs in an image file
that persists between runs. A soft reset restarts that VM and runs boot.py (and main.py when the
reset came from the friendly REPL), as a board does.

While the board runs code (main.py, or an `exec`), what arrives on the pty is the program's stdin,
except Ctrl-C, which interrupts it unless the firmware called micropython.kbd_intr(-1): then Ctrl-C
is an ordinary byte too, as on a board. That is what makes the production console lock testable.

    cellguard virtual-board [--image build/virtual-board/flash.img] [--modem-port /dev/pts/N]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import select
import selectors
import signal
import struct
import subprocess
import sys
import time
import tty
from pathlib import Path

from cgsim import vbrecord

REPO = Path(__file__).resolve().parents[2]  # host/<package>/<module>.py
DEVICE_SCRIPT = Path(__file__).resolve().with_name("vboard_device.py")  # the "chip": runs on MicroPython
MICROPYTHON = Path(sys.executable).parent / "micropython"
DEFAULT_DIR = REPO / "build" / "virtual-board"
BOARD_PROFILE = REPO / "boards" / "virtual" / "board.json"

RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
HOLD_AFTER_INTERRUPT_S = 0.5
RX_BUFFER_BYTES = 4096  # the smallest pipe Linux makes; a board's UART or USB CDC receive buffer is smaller still
TX_STALL_S = 10.0  # how long output waits for a host that does not read before it is dropped
PASTE_WINDOW = 128  # bytes the host may send before waiting for \x01 (a Pico's value)
CTRL_A, CTRL_B, CTRL_C, CTRL_D, CTRL_E = 1, 2, 3, 4, 5

log = logging.getLogger("virtual_board")


def _board_flash_geometry() -> tuple[int, int, str]:
    try:
        profile = json.loads(BOARD_PROFILE.read_text())
        fs = profile["filesystem"]
        return int(fs["block_size"]), int(fs["block_count"]), str(profile.get("heap", "256K"))
    except (OSError, KeyError, ValueError):
        return 4096, 512, "256K"


class VirtualBoard:
    """The pty front end: REPL protocols here, code execution in a MicroPython child process."""

    def __init__(self, image: Path, modem_port: str | None = None, heap: str | None = None):
        self.block_size, self.block_count, default_heap = _board_flash_geometry()
        self.image = image
        self.heap = heap or default_heap
        self.modem_port = modem_port
        self.master, self._slave_keepalive = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self._slave_keepalive)
        os.set_blocking(self.master, False)
        self.port = os.ttyname(self._slave_keepalive)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.master, selectors.EVENT_READ, "pty")
        self.child: subprocess.Popen | None = None
        self.mode = "friendly"  # which REPL the board returns to: friendly | raw
        self.state = "starting"  # starting | running | friendly | raw | paste
        self.line = bytearray()
        self.cont: list[str] = []  # friendly REPL continuation lines
        self.paste_count = 0
        self.kbd_intr = True
        self.version = "?"
        self._ctl_buf = bytearray()
        self._run_main = True
        self._last_out = 0
        self._stopping = False
        self._crashes = 0
        self._boot_pending = False
        self._held: bytearray | None = None
        self._held_until = 0.0
        self._early = bytearray()
        self._tx_deaf = False  # nobody read the port for TX_STALL_S: output is dropped (see _tx)
        self.on_ready = None  # called once, when the VM first runs (tools announce the port then)

    # ---- child VM ---------------------------------------------------------------------------
    def _spawn(self, run_main: bool) -> None:
        cmd_r, self._cmd_w = os.pipe()
        self._ctl_r, ctl_w = os.pipe()
        env = dict(os.environ)
        env["MICROPYPATH"] = ".frozen"
        env["CELLGUARD_FS"] = "/"
        env["CELLGUARD_BOARD"] = "virtual"
        if self.modem_port:
            env["CELLGUARD_MODEM_PORT"] = self.modem_port
        args = [str(self.image), str(self.block_size), str(self.block_count), str(cmd_r), str(ctl_w)]
        # The board's RX buffer: a pipe whose read end we keep too, so that what the program left
        # unread when it ends goes to the REPL, as on a board (see _take_unread).
        rx_r, self._rx_w = os.pipe()
        self.child = subprocess.Popen(
            [str(MICROPYTHON), "-X", f"heapsize={self.heap}", str(DEVICE_SCRIPT), *args],
            stdin=rx_r,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(cmd_r, ctl_w),
            env=env,
        )
        self._rx_r = rx_r
        os.close(cmd_r)
        os.close(ctl_w)
        os.set_blocking(self._rx_w, False)  # never _rx_r: the VM shares that file, and reads it blocking
        # The board's receive buffer is a few KiB, as a UART's or a USB CDC endpoint's is, not the
        # pipe's default 64 KiB: a flood beyond it is lost at the port (as on a board), instead of
        # queueing minutes of stale lines in front of the next person who asks.
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._rx_w, fcntl.F_SETPIPE_SZ, RX_BUFFER_BYTES)
        for f, tag in ((self.child.stdout, "out"), (self.child.stderr, "out"), (self._ctl_r, "ctl")):
            # Non-blocking for good: an event can be stale by the time the loop handles it (DONE,
            # handled first in the same select(), drains the output), and a blocking read of an
            # empty pipe would wait for an idle VM, with nothing else served (see _read_child).
            os.set_blocking(f if isinstance(f, int) else f.fileno(), False)
            self.sel.register(f, selectors.EVENT_READ, tag)
        self.state = "starting"
        self._early = bytearray()
        self._held = None
        # Until boot.py has run, Ctrl-C is a plain byte: the interrupt character is -1 before
        # pyexec runs boot.py, as in the custom build docs/flashing.md prescribes (the residual
        # window of a stock build is closed). The VM reports what the firmware set (KBD) after boot.py.
        self.kbd_intr = False
        self._run_main = run_main
        self._ctl_buf.clear()

    def _kill_child(self) -> None:
        if self.child is None:
            return
        for f in (self.child.stdout, self.child.stderr, self._ctl_r):
            try:
                self.sel.unregister(f)
            except (KeyError, ValueError):
                pass
        self.child.kill()
        self.child.wait()
        for f in (self.child.stdout, self.child.stderr):
            f.close()
        os.close(self._rx_r)
        os.close(self._rx_w)
        os.close(self._ctl_r)
        os.close(self._cmd_w)
        self.child = None

    def soft_reset(self, mode: str) -> None:
        self._kill_child()
        self.mode = mode
        self._tx(b"MPY: soft reboot\r\n")
        self._spawn(run_main=(mode == "friendly"))

    def _send_cmd(self, kind: bytes, payload: bytes = b"") -> None:
        os.write(self._cmd_w, kind + b" %d\n" % len(payload) + payload)
        self.state = "running"

    # ---- output to the pty ------------------------------------------------------------------
    def _tx(self, data: bytes) -> None:
        # A board's USB serial waits for a host that reads slowly (a loaded machine's mpremote), but
        # a port nobody reads drops what it sends, or the board would hang. So: a full pty buffer is
        # waited on for up to TX_STALL_S, then the rest is dropped and so is all output until the
        # host sends something again. A partial write sends the rest, never a silent truncation.
        view = memoryview(data)
        while view and not self._tx_deaf:
            try:
                view = view[os.write(self.master, view):]
            except BlockingIOError:
                if not select.select([], [self.master], [], TX_STALL_S)[1]:
                    self._tx_deaf = True
                    log.debug("nobody reads the port: dropping output until the host sends something")
            except OSError as e:
                log.debug("pty write failed: %s", e)
                return

    def _tx_cooked(self, data: bytes) -> None:
        # MicroPython boards send "\r\n" for every "\n" a program prints; the unix port sends "\n".
        out = bytearray()
        for b in data:
            if b == 0x0A and self._last_out != 0x0D:
                out += b"\r"
            out.append(b)
            self._last_out = b
        self._tx(bytes(out))

    def _banner(self) -> bytes:
        return (
            b"MicroPython v%s; cellguard virtual board (unix port, littlefs)\r\n"
            b'Type "help()" for more information.\r\n>>> ' % self.version.encode()
        )

    def _drain_child_output(self) -> None:
        for f in (self.child.stdout, self.child.stderr):
            while chunk := self._read_child(f.fileno()):
                self._tx_cooked(chunk)

    @staticmethod
    def _read_child(fd: int, size: int = 4096) -> bytes | None:
        # The VM's pipes are non-blocking (see _spawn): None when there is nothing to read now (a
        # stale readiness event), b"" at the end (the VM is gone).
        try:
            return os.read(fd, size)
        except BlockingIOError:
            return None

    def _on_output(self, key: selectors.SelectorKey) -> None:
        chunk = self._read_child(key.fd)
        if chunk:
            self._tx_cooked(chunk)
        elif chunk == b"":
            self.sel.unregister(key.fileobj)

    # ---- control messages from the VM -----------------------------------------------------------
    def _on_ctl(self) -> None:
        chunk = self._read_child(self._ctl_r, 65536)
        if chunk is None:
            return
        if not chunk:
            self._on_child_died()
            return
        self._ctl_buf += chunk
        while True:
            nl = self._ctl_buf.find(b"\n")
            if nl < 0:
                return
            head = bytes(self._ctl_buf[:nl]).split()
            if head[0] == b"DONE":
                n = int(head[1])
                if len(self._ctl_buf) < nl + 1 + n:
                    return
                err = bytes(self._ctl_buf[nl + 1 : nl + 1 + n])
                del self._ctl_buf[: nl + 1 + n]
                self._on_done(err)
                continue
            del self._ctl_buf[: nl + 1]
            if head[0] == b"READY":
                self.version = head[1].decode()
                self._send_cmd(b"BOOT", b"main" if self._run_main else b"")
                self._boot_pending = True
                if self.on_ready is not None:
                    self.on_ready(self)
                    self.on_ready = None
                # Bytes that arrived before the VM ran are plain input, never an interrupt: a board's
                # interrupt character only takes effect once boot.py runs (mp_interrupt_char is -1).
                early, self._early = self._early, bytearray()
                if early:
                    try:
                        os.write(self._rx_w, bytes(early))
                    except (BlockingIOError, BrokenPipeError):
                        pass
            elif head[0] == b"KBD":
                self.kbd_intr = int(head[1]) == CTRL_C

    def _release_held(self) -> None:
        held, self._held = self._held, None
        for b in held or b"":
            self._on_byte(b)

    def _take_unread(self) -> bytes:
        # Bytes the program never read (typed ahead, or sent while the VM was starting: mpremote's
        # Ctrl-C, Ctrl-A after a soft reset). On a board they wait in the RX buffer for the REPL.
        # The VM is idle between commands, so nothing else reads the pipe now.
        import fcntl
        import termios

        waiting = struct.unpack("i", fcntl.ioctl(self._rx_r, termios.FIONREAD, b"\0\0\0\0"))[0]
        return os.read(self._rx_r, waiting) if waiting else b""

    def _on_done(self, err: bytes) -> None:
        self._drain_child_output()
        unread = self._take_unread()
        self._finish(err)
        if unread:
            self._held = bytearray(unread) + (self._held or b"")
        self._release_held()

    def _finish(self, err: bytes) -> None:
        if self._boot_pending:
            self._boot_pending = False
            self._tx_cooked(err)
            if self.mode == "raw":
                self._tx(RAW_BANNER + b">")
                self.state = "raw"
            else:
                self._tx(self._banner())
                self.state = "friendly"
            return
        if self.mode == "raw":
            self._tx(b"\x04")
            self._tx_cooked(err)
            self._tx(b"\x04>")
            self.state = "raw"
        else:
            self._tx_cooked(err)
            self._tx(b">>> ")
            self.state = "friendly"

    def _on_child_died(self) -> None:
        code = self.child.wait() if self.child else None
        self._drain_child_output()
        if self.state == "starting":
            self._crashes += 1
            if self._crashes >= 3:  # the VM cannot even mount its flash: stop instead of spinning
                self._tx(b"\r\n[virtual board: the VM does not start (exit %s)]\r\n" % str(code).encode())
                log.error("the MicroPython VM exits before it is ready (exit %s); stopping", code)
                self._stopping = True
                return
        else:
            self._crashes = 0
        self._tx(b"\r\n[virtual board: the VM stopped (exit %s); resetting]\r\n" % str(code).encode())
        self._kill_child()
        self.mode = "friendly"
        self._spawn(run_main=True)

    # ---- input from the pty -----------------------------------------------------------------
    def _on_pty(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except BlockingIOError:
            return
        except OSError:  # EIO: no client has the port open
            time.sleep(0.05)
            return
        self._tx_deaf = False  # someone is there: output flows again
        for b in data:
            self._on_byte(b)

    def _to_program(self, b: int) -> None:
        if self._held is not None:
            self._held.append(b)
            return
        if b == CTRL_C and self.kbd_intr and self.state == "running":
            # As on a board, what follows the interrupt waits in the RX buffer: for the REPL if
            # the program ends, for the program itself if it catches KeyboardInterrupt.
            self.child.send_signal(signal.SIGINT)
            self._held = bytearray()
            self._held_until = time.monotonic() + HOLD_AFTER_INTERRUPT_S
            return
        try:
            os.write(self._rx_w, bytes([b]))
        except (BlockingIOError, BrokenPipeError):
            pass  # the board's RX buffer is full, or the VM is gone: the byte is lost, as on a UART

    def _on_byte(self, b: int) -> None:
        state = self.state
        if state == "starting":
            # The VM is not up yet: bytes wait in the RX buffer, as on a board during power-on.
            self._early.append(b)
        elif state == "running":
            self._to_program(b)
        elif state == "raw":
            self._on_raw(b)
        elif state == "paste":
            self._on_paste(b)
        else:
            self._on_friendly(b)

    def _on_raw(self, b: int) -> None:
        if b == CTRL_A:
            if bytes(self.line) == b"\x05A":
                self.line.clear()
                self.paste_count = 0
                self._tx(b"R\x01" + struct.pack("<H", PASTE_WINDOW))
                self.state = "paste"
                return
            self.line.clear()
            self._tx(RAW_BANNER + b">")
        elif b == CTRL_B:
            self.line.clear()
            self.mode = "friendly"
            self.state = "friendly"
            self._tx(b"\r\n" + self._banner())
        elif b == CTRL_C:
            self.line.clear()
        elif b == CTRL_D:
            if not self.line:
                self.soft_reset("raw")
                return
            code = bytes(self.line)
            self.line.clear()
            self._tx(b"OK")
            self._send_cmd(b"EXEC", code)
        else:
            self.line.append(b)

    def _on_paste(self, b: int) -> None:
        if b == CTRL_D:
            code = bytes(self.line)
            self.line.clear()
            self._tx(b"\x04")  # end of data acknowledged; then output, \x04, error, \x04
            self._send_cmd(b"EXEC", code)
            return
        self.line.append(b)
        self.paste_count += 1
        if self.paste_count % PASTE_WINDOW == 0:
            self._tx(b"\x01")  # the host may send another window

    def _on_friendly(self, b: int) -> None:
        if b == CTRL_A:
            self.line.clear()
            self.cont.clear()
            self.mode = "raw"
            self.state = "raw"
            self._tx(b"\r\n" + RAW_BANNER + b">")
        elif b == CTRL_B:
            self.line.clear()
            self.cont.clear()
            self._tx(b"\r\n" + self._banner())
        elif b == CTRL_C:
            self.line.clear()
            self.cont.clear()
            self._tx(b"\r\n>>> ")
        elif b == CTRL_D:
            if not self.line and not self.cont:
                self._tx(b"\r\n")
                self.soft_reset("friendly")
        elif b in (0x08, 0x7F):
            if self.line:
                self.line.pop()
                self._tx(b"\x08 \x08")
        elif b == 0x0D:
            self._tx(b"\r\n")
            self._friendly_line(self.line.decode(errors="replace"))
            self.line.clear()
        elif b >= 0x20 or b == 0x09:
            self.line.append(b)
            self._tx(bytes([b]))

    def _friendly_line(self, text: str) -> None:
        if self.cont or text.rstrip().endswith(":"):
            if text.strip():
                self.cont.append(text)
                self._tx(b"... ")
                return
            text = "\n".join(self.cont) + "\n"
            self.cont.clear()
        elif not text.strip():
            self._tx(b">>> ")
            return
        self._send_cmd(b"SINGLE", text.encode())

    # ---- main loop --------------------------------------------------------------------------
    def serve(self) -> None:
        self._spawn(run_main=True)
        while not self._stopping:
            child = self.child
            for key, _ in self.sel.select(timeout=0.05 if self._held is not None else 0.5):
                if self.child is not child:
                    break  # a reset replaced the VM: the other events belong to the old one
                tag = key.data
                if tag == "pty":
                    self._on_pty()
                elif tag == "ctl":
                    self._on_ctl()
                else:
                    self._on_output(key)
                if self._stopping:
                    break
            if self._held is not None and time.monotonic() > self._held_until:
                self._release_held()  # the program survived the interrupt: the bytes are its input

    def stop(self, *_args) -> None:
        self._stopping = True

    def close(self) -> None:
        self._kill_child()
        os.close(self.master)
        os.close(self._slave_keepalive)


# ---- the emulated modem on the board's UART ----------------------------------------------------------


def _profile_dialect() -> str:
    try:
        return json.loads(BOARD_PROFILE.read_text())["modem"]["dialect"]
    except (OSError, KeyError, ValueError):
        return "bg96"


def start_modem(dialect: str, log_file: Path | None = None, timeout: float = 120,
                state: Path | None = None) -> tuple[subprocess.Popen, str]:
    """Start the modem emulator (cgsim.modem) and return it with its pty path (from its first line of output).

    state: the file its SIM keeps its PIN, lock and retry counters in (cgsim.simstate), as a real SIM does.
    The announcement (or the process's end) is the event awaited; `timeout` only bounds a hung start,
    and is generous because a loaded machine starts Python slowly.
    """
    import re
    import select

    proc = subprocess.Popen(
        [sys.executable, "-m", "cgsim.modem", "--dialect", dialect, *(["--state", str(state)] if state else [])],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
        m = re.search(r" on (/dev/\S+)", line)
        if m:
            if log_file is not None:  # keep draining its log so it never blocks on a full pipe
                import shutil
                import threading

                def drain() -> None:
                    with open(log_file, "a") as f:
                        shutil.copyfileobj(proc.stdout, f)

                threading.Thread(target=drain, daemon=True).start()
            return proc, m.group(1)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"the modem emulator did not announce its pty: {seen[-300:]!r}")


# ---- starting one from another program (tools/flash.py, tests) --------------------------------------
def launch(image: Path, port_file: Path, log_file: Path, *, modem: str = "none",
           detach: bool = False, timeout: float = 180) -> tuple[subprocess.Popen, str]:
    """Start a virtual board process; return it and its pty path once its VM is up.

    Waits for the port file (or the process's end); `timeout` only bounds a hung start (a loaded
    machine may take long to start Python, the modem and the VM, which is not a failure).

    modem: "none", "auto" (the emulated modem of the profile's dialect), a dialect name, or a pty path of a modem emulator already running.
    """
    port_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "cgsim.virtual_board", "--image", str(image), "--port-file", str(port_file)]
    if modem.startswith("/"):
        cmd += ["--modem-port", modem]
    else:
        cmd += ["--modem", modem]
    with open(log_file, "ab") as logf:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, start_new_session=detach
        )
    deadline = time.monotonic() + timeout
    while not port_file.exists():  # written atomically by main() once the VM runs
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the virtual board did not start; see {log_file}")
        time.sleep(0.02)
    return proc, port_file.read_text().strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=DEFAULT_DIR / "flash.img", help="littlefs image file")
    parser.add_argument("--port-file", type=Path,
                        help="write the pty path here once it is ready, and the pid beside it"
                             " (default: `port` next to the image)")
    parser.add_argument("--modem-port", help="a running modem emulator's pty (the board's UART)")
    parser.add_argument("--modem", default="auto",
                        help="start an emulated modem: a dialect, 'auto' (the profile's) or 'none'")
    parser.add_argument("--heap", help="MicroPython heap size (default: boards/virtual/board.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if not MICROPYTHON.exists():
        print(f"virtual board: no MicroPython unix port at {MICROPYTHON}; run `make venv`", file=sys.stderr)
        return 2
    args.image.parent.mkdir(parents=True, exist_ok=True)
    port_file = args.port_file or args.image.parent / vbrecord.PORT_FILE
    # One board per flash image: two VMs writing the same littlefs would corrupt it.
    import fcntl

    lock = open(args.image.with_name(args.image.name + ".lock"), "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        live, _ = vbrecord.running(port_file)
        where = f" on {live}" if live else ""
        print(f"virtual board: another virtual board already runs on {args.image}{where}; "
              "use it, or stop it first", file=sys.stderr)
        return 4
    modem_proc = None
    modem_port = args.modem_port
    if not modem_port and args.modem != "none":
        dialect = _profile_dialect() if args.modem == "auto" else args.modem
        # The SIM is kept beside the flash image: a restarted board finds its provisioned SIM again.
        # A new flash image is a new unit, and a new unit comes with a new SIM.
        sim_state = args.image.with_name(args.image.stem + ".sim.json")
        if not args.image.exists():
            sim_state.unlink(missing_ok=True)
        modem_proc, modem_port = start_modem(dialect, args.image.parent / "modem.log", state=sim_state)
        print(f"emulated {dialect} modem on {modem_port} is the board's UART", flush=True)
    board = VirtualBoard(args.image, modem_port=modem_port, heap=args.heap)
    signal.signal(signal.SIGTERM, board.stop)
    signal.signal(signal.SIGINT, board.stop)

    def announce(vb: VirtualBoard) -> None:
        vbrecord.write(port_file, vb.port, os.getpid())  # `make status` and `make flash` find it there
        print(f"virtual board on {vb.port} (flash image {args.image}); Ctrl-C stops it", flush=True)
        print(f"  try: mpremote connect {vb.port} fs ls", flush=True)

    board.on_ready = announce
    try:
        board.serve()
    finally:
        vbrecord.clear(port_file, os.getpid())
        board.close()
        if modem_proc is not None:
            modem_proc.terminate()
            modem_proc.wait(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
