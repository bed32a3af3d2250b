"""The emulator as a package of dialects (docs/modem.md, "Adding a modem family"): a fifth modem
family is one Dialect subclass registered by name; and the distribution installs with `pip
install .` into a fresh virtual environment with a working `cellguard` command."""

import os
import select
import subprocess
import sys
import termios
import time
import tty

import pytest
from cgsim import modem as emulator_pkg
from cgsim.modem import Dialect, register, unregister
from harness import REPO
from modem_fixtures import chat, emulated_modem, standalone_emulator


class Toy(Dialect):
    """A made-up fifth family: its own boot line, IMEI command, socket command and prompt."""

    name = "toy"
    boot_urcs = ("TOY UP",)
    reset_command = "AT+TOYRST"
    prompt = b"$"

    def commands(self):
        return {"+TOYID": lambda sep, args: ([f"+TOYID: {self.modem.imei}"], "OK"), "+TOYSOCK": self.sock}

    def sock(self, sep, args):
        ident = self.modem.sockets.free(2)
        self.open_socket(ident)
        return [f"+TOYSOCK: {ident}"], "OK"

    def recv_urc(self, s, size):
        return f"+TOYDATA: {s.ident}"


@pytest.fixture
def toy_dialect():
    register(Toy)
    try:
        yield "toy"
    finally:
        unregister("toy")


@pytest.mark.timeout(120)
def test_a_fifth_dialect_is_one_registered_class(toy_dialect):
    assert "toy" in emulator_pkg.names()
    with emulated_modem(toy_dialect) as emu:
        fd = os.open(emu.path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(fd, termios.TCSANOW)  # (the default TCSAFLUSH would drop a boot line already sent)
        try:
            assert select.select([fd], [], [], 60)[0] and os.read(fd, 100) == b"\r\nTOY UP\r\n"
            chat(fd, b"ATE0")
            assert chat(fd, b"AT+TOYID") == f"\r\n+TOYID: {emu.imei}\r\n\r\nOK\r\n".encode()
            assert chat(fd, b"AT+TOYSOCK") == b"\r\n+TOYSOCK: 0\r\n\r\nOK\r\n"
            # ...and the 3GPP base comes with it: SIM, registration, errors.
            assert chat(fd, b"AT+CPIN?") == b"\r\n+CPIN: READY\r\n\r\nOK\r\n"
            assert chat(fd, b"AT+CEREG?") == b"\r\n+CEREG: 0,1\r\n\r\nOK\r\n"
            emu.hang("cfun")
            os.write(fd, b"AT+TOYRST\r")  # its own reset command still resets a hung modem
            got = b""
            while b"TOY UP" not in got:
                assert select.select([fd], [], [], 60)[0], got  # the boot line is the event
                got += os.read(fd, 100)
        finally:
            os.close(fd)
    assert emu.reboots == 1


def test_unknown_dialect_names_the_registered_ones():
    with pytest.raises(ValueError, match="nrf91, bg96, sim7080, sara-r4"):
        emulator_pkg.ModemEmulator("sara-r9")


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_pip_install_into_a_fresh_venv(tmp_path):
    # The checkout as it stands (tracked and new files), copied so the build leaves it untouched.
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.split(b"\0")
    src = tmp_path / "src"
    for name in filter(None, files):
        path = REPO / os.fsdecode(name)
        if path.is_file():
            (src / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            (src / os.fsdecode(name)).write_bytes(path.read_bytes())
    venv = tmp_path / "venv"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(src)], check=True)
    print(f"venv + pip install: {time.monotonic() - started:.0f} s")
    cellguard = str(venv / "bin" / "cellguard")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    hub = subprocess.run([cellguard, "hub", "serve", "--help"], capture_output=True, text=True, env=env,
                         cwd=tmp_path)
    assert hub.returncode == 0 and "--db" in hub.stdout, hub.stderr
    command = [cellguard, "emulator", "--dialect", "sim7080", "--zero-delays"]
    with standalone_emulator(command, env=env, cwd=tmp_path) as (first, fd):
        assert first.startswith("sim7080 modem emulator on /dev/pts/"), first
        assert chat(fd, b"AT+CCID").endswith(b"OK\r\n")


@pytest.mark.parametrize("module", ["cgsim.emulator", "cgsim.modem"])
def test_old_and_new_module_entry_points(module):
    # `python -m cgsim.emulator` is what scripts written before the package split run.
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--dialect" in out.stdout and "sara-r4" in out.stdout
