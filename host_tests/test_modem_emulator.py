"""The emulator on its own: `make emulator` (standalone, prints the pty path) and its SIM/network
model seen from a plain pty, with exact per-dialect formats."""

import os
import select
import sys
import tty
from pathlib import Path

import pytest
from harness import REPO
from modem_fixtures import chat, emulated_modem, standalone_emulator


@pytest.mark.parametrize("dialect", ["nrf91", "sara-r4"])
def test_standalone_emulator_prints_its_pty_and_answers(dialect):
    command = [str(Path(sys.executable).parent / "cellguard"), "emulator", "--dialect", dialect, "--zero-delays"]
    with standalone_emulator(command, cwd=REPO) as (first, fd):
        assert first.startswith(f"{dialect} modem emulator on /dev/pts/")
        assert chat(fd, b"AT").endswith(b"AT\r\r\nOK\r\n")  # echo is on until ATE0
        chat(fd, b"ATE0")
        assert chat(fd, b"AT+CGSN") == b"\r\n350457790123457\r\n\r\nOK\r\n"


DIALECT_FORMATS = {
    "nrf91": [(b"AT%XICCID", b"\r\n%XICCID: 89882806660000012346\r\n\r\nOK\r\n")],
    "bg96": [
        (b"AT+QCCID", b"\r\n+QCCID: 89882806660000012346\r\n\r\nOK\r\n"),
        (b'AT+QPINC="SC"', b'\r\n+QPINC: "SC",3,10\r\n\r\nOK\r\n'),
    ],
    "sim7080": [
        (b"AT+CCID", b"\r\n89882806660000012346\r\n\r\nOK\r\n"),
        (b"AT+SPIC", b"\r\n+SPIC: 3,10,3,10\r\n\r\nOK\r\n"),
    ],
    "sara-r4": [
        (b"AT+CCID", b"\r\n+CCID: 89882806660000012346\r\n\r\nOK\r\n"),
        (b"AT+USOCR=17", b"\r\n+USOCR: 0\r\n\r\nOK\r\n"),
    ],
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dialect", sorted(DIALECT_FORMATS))
def test_dialect_reply_formats(dialect):
    with emulated_modem(dialect) as emu:
        fd = os.open(emu.path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(fd)
        try:
            chat(fd, b"ATE0")
            for cmd, reply in DIALECT_FORMATS[dialect]:
                assert chat(fd, cmd) == reply
            assert chat(fd, b"AT+CPIN?") == b"\r\n+CPIN: READY\r\n\r\nOK\r\n"
            assert chat(fd, b"AT+NOPE", b"ERROR\r\n") == b"\r\nERROR\r\n"  # +CMEE=0: plain ERROR
            chat(fd, b"AT+CMEE=1")
            assert chat(fd, b'AT+CPWD="SC","0000","1111"', b"\r\n") == b"\r\n+CME ERROR: 16\r\n"
        finally:
            os.close(fd)
    assert emu.sim.pin_left == 2 and emu.commands[0] == "ATE0"


def _open(emu):
    fd = os.open(emu.path, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    return fd


@pytest.mark.timeout(120)
def test_sim_none_means_no_sim():
    with emulated_modem("bg96", sim=None) as emu:
        fd = _open(emu)
        try:
            chat(fd, b"ATE0")
            chat(fd, b"AT+CMEE=1")
            assert chat(fd, b"AT+CPIN?", b"\r\n") == b"\r\n+CME ERROR: 10\r\n"  # SIM not inserted
        finally:
            os.close(fd)
    assert emu.sim is None


@pytest.mark.timeout(120)
def test_reboot_after_some_reply_lines():
    # The first line of the reply leaves, then the modem restarts: RDY instead of the rest and OK.
    with emulated_modem("bg96") as emu:
        fd = _open(emu)
        try:
            chat(fd, b"ATE0")
            emu.reboot_during("AT+CGDCONT?", after_lines=1)
            chat(fd, b'AT+CGDCONT=1,"IP","a"')
            chat(fd, b'AT+CGDCONT=2,"IP","b"')
            got = chat(fd, b"AT+CGDCONT?", b"+CPIN: READY\r\n")
        finally:
            os.close(fd)
    assert got == b'\r\n+CGDCONT: 1,"IP","a"\r\n\r\nRDY\r\n\r\n+CFUN: 1\r\n\r\n+CPIN: READY\r\n'
    assert emu.reboots == 1


@pytest.mark.timeout(120)
def test_power_key_toggles_and_an_off_modem_is_deaf():
    import socket

    with emulated_modem("nrf91", powered=False) as emu:
        fd = _open(emu)
        wire = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            os.write(fd, b"AT\r")
            assert not select.select([fd], [], [], 0.3)[0]  # off: no echo, no answer
            wire.sendto(b"pwrkey", ("127.0.0.1", emu.reset_port))
            ready, _, _ = select.select([fd], [], [], 3)
            assert ready and os.read(fd, 100) == b"\r\nReady\r\n"
            chat(fd, b"ATE0")
            assert chat(fd, b"AT+CFUN?") == b"\r\n+CFUN: 0\r\n\r\nOK\r\n"  # the SLM's radio starts off
            wire.sendto(b"pwrkey", ("127.0.0.1", emu.reset_port))  # and off again
            for _ in range(300):  # the pulse lands in the emulator's thread
                if not emu.powered:
                    break
                select.select([], [], [], 0.01)
            os.write(fd, b"AT\r")
            assert not select.select([fd], [], [], 0.3)[0]
        finally:
            wire.close()
            os.close(fd)
    assert emu.power_key_pulses == 2 and not emu.powered
