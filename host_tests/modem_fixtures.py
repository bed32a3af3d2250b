"""Shared test helpers: an emulated modem on a pty, a real UDP echo server, and the firmware modem
driver running on the MicroPython unix port against them.

How to use (messaging, SIM-lock and other tests reuse these):

    from modem_fixtures import DIALECTS, emulated_modem, udp_echo_server, run_driver

    @pytest.mark.timeout(60)
    @pytest.mark.parametrize("dialect", DIALECTS)
    def test_something(dialect):
        with emulated_modem(dialect) as emu, udp_echo_server() as echo:
            out = run_driver(emu, '''
    attach()                                   # init, wait for registration, APN, PDP
    s = m.open_udp()
    s.sendto(b"ping", "127.0.0.1", ECHO_PORT)
    print("GOT", s.recvfrom(3000))
    ''', echo_port=echo.port)
            assert "GOT (b'ping'" in out
            assert not emu.commands_matching("AT+CGACT=0")   # every command is recorded

The script body runs after DRIVER_PRELUDE, which defines: `engine` (cellguard.at.AtEngine on the
pty, with short test timeouts, and a reset pin and a power key wired to the emulator's reset port), `m`
(cellguard.modem.Modem), `attach()`, and the constants PTY, DIALECT, ECHO_PORT. Emulator faults are
injected from the test (CPython) side with the ModemEmulator methods, either before run_driver or,
for faults that must land mid-run, with spawn_driver and the emulator's command record.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import threading
import tty
from collections.abc import Iterator

from cgsim.modem import Delays, ModemEmulator, Network, Sim  # noqa: F401  (re-exported)
from harness import MICROPYTHON_RT, Runtime, RuntimeFailed, spawn_micropython

DIALECTS = ("nrf91", "bg96", "sim7080", "sara-r4")

DRIVER_PRELUDE = """
import sys
from cellguard import at, dialects, modem, runtime
PTY = %(pty)r
DIALECT = %(dialect)r
RESET_PORT = %(reset_port)d
ECHO_PORT = %(echo_port)d

def _wire(what):
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(what, socket.getaddrinfo('127.0.0.1', RESET_PORT)[0][-1])
    s.close()

def reset_pin():
    # The board's reset line, wired to the emulator's reset port.
    _wire(b'reset')

def power_key():
    # The board's PWRKEY line (toggles the modem's power), on the same wire.
    _wire(b'pwrkey')

d = dialects.get(DIALECT)
engine = at.AtEngine(runtime.open_uart(PTY), d.line_buffer(), reset_pin=reset_pin, boot_urcs=d.boot_urcs,
                     log=lambda s: print('LOG', s), power_key=power_key)
engine.default_timeout_ms = %(at_timeout_ms)d
engine.timeouts = ()
engine.reset_wait_ms = 3000
engine.resync_attempts = 3
engine.resync_timeout_ms = 300
m = modem.Modem(engine, d)
m.attach_timeout_ms = 5000
m.pdp_timeout_ms = 5000
m.socket_open_timeout_ms = 5000

def attach(apn='iot.test'):
    m.power_up()
    m.wait_registered(5000)
    m.set_apn(apn)
    m.activate_pdp()

def pause():
    # run_driver_paused: the test makes something happen now, between two commands, then says go on.
    print('PAUSED')
    if hasattr(sys.stdout, 'flush'):
        sys.stdout.flush()
    sys.stdin.readline()
"""


def driver_script(emu: ModemEmulator, body: str, echo_port: int = 0, at_timeout_ms: int = 1500) -> str:
    prelude = DRIVER_PRELUDE % {
        "pty": emu.path,
        "dialect": emu.dialect,
        "reset_port": emu.reset_port,
        "echo_port": echo_port,
        "at_timeout_ms": at_timeout_ms,
    }
    return prelude + "\n" + body.strip("\n") + "\n"


def run_driver(
    emu: ModemEmulator,
    body: str,
    echo_port: int = 0,
    timeout: float = 45,
    at_timeout_ms: int = 1500,
    heapsize: str = "256K",
    extra_paths=(),
    runtime: Runtime = MICROPYTHON_RT,
) -> str:
    """Run `body` (after DRIVER_PRELUDE) on the MicroPython unix port; return what it printed.

    The heap is 256K because the unix port is 64-bit (objects twice a microcontroller's size) and
    compiles the modules from source; test_modem_roundtrip shows the driver fits 128K as .mpy.
    runtime=CPYTHON_RT runs the same script on CPython (pyserial on the pty).
    """
    return runtime.run(
        driver_script(emu, body, echo_port, at_timeout_ms),
        heapsize=heapsize,
        timeout=timeout,
        extra_paths=extra_paths,
    )


def spawn_driver(emu: ModemEmulator, body: str, echo_port: int = 0, at_timeout_ms: int = 1500, **popen):
    """Like run_driver, but returns the running process (the caller must wait/kill it)."""
    import subprocess

    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.STDOUT)
    return spawn_micropython(driver_script(emu, body, echo_port, at_timeout_ms), heapsize="256K", **popen)


def run_driver_paused(
    emu: ModemEmulator, body: str, at_pause, echo_port: int = 0, timeout: float = 45, at_timeout_ms: int = 1500
) -> str:
    """Like run_driver, where the script calls pause() once: the driver waits there, idle between two
    commands, while the test runs at_pause() (a fault that must land at that exact point: a timer
    started by a command would race the driver's next one on a loaded machine)."""
    proc = spawn_driver(emu, body, echo_port, at_timeout_ms, stdin=subprocess.PIPE)
    try:
        out = []
        for line in proc.stdout:
            out.append(line)
            if line.strip() == "PAUSED":
                at_pause()
                proc.stdin.write("go on\n")
                proc.stdin.flush()
                break
        rest, _ = proc.communicate(timeout=timeout)
        text = "".join(out) + rest
        if proc.returncode != 0:
            raise RuntimeFailed(f"micropython exited {proc.returncode}:\n{text}")
        return text
    finally:
        proc.kill()
        proc.wait()


def chat(fd: int, cmd: bytes, until: bytes = b"OK\r\n", timeout: float = 60.0) -> bytes:
    """Write cmd + CR to a raw pty and read until the output ends with `until` (tests that talk
    to the emulator as a terminal would)."""
    os.write(fd, cmd + b"\r")
    got = b""
    while not got.endswith(until):
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, f"no answer to {cmd!r}; got {got!r}"
        got += os.read(fd, 4096)
    return got


@contextlib.contextmanager
def standalone_emulator(command: list[str], **popen) -> Iterator[tuple[str, int]]:
    """Run `cellguard emulator ...` (command) as its own process; yield its first line of output
    (which names the pty) and the pty opened raw. Ctrl-C must end it with exit code 0."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    try:
        first = proc.stdout.readline()
        assert " modem emulator on /dev/pts/" in first, first
        fd = os.open(first.split()[4], os.O_RDWR | os.O_NOCTTY)
        tty.setraw(fd)
        try:
            yield first, fd
        finally:
            os.close(fd)
        proc.send_signal(signal.SIGINT)
        # The exit is the event; the bound only catches a hang (a loaded machine is slow to schedule it).
        code = proc.wait(120)
        assert code == 0, (code, proc.stderr.read()[-2000:])
    finally:
        proc.kill()
        proc.stdout.close()
        proc.stderr.close()


@contextlib.contextmanager
def emulated_modem(dialect: str, **kwargs) -> Iterator[ModemEmulator]:
    """A started ModemEmulator with zero delays unless `delays=` says otherwise."""
    kwargs.setdefault("delays", Delays.zero())
    emu = ModemEmulator(dialect, **kwargs)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


class UdpEchoServer:
    """A real UDP server on 127.0.0.1 that sends every datagram back; .received records them."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self.echo = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="udp-echo", daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            self.received.append((data, addr))
            if self.echo:
                self.sock.sendto(data, addr)

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sock.sendto(data, addr)

    def start(self) -> UdpEchoServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@contextlib.contextmanager
def udp_echo_server() -> Iterator[UdpEchoServer]:
    server = UdpEchoServer().start()
    try:
        yield server
    finally:
        server.stop()
