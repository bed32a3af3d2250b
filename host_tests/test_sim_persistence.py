"""The emulated SIM keeps its state across restarts, as a real SIM does (cgsim.simstate, --state)."""

import json
import os
import signal
import subprocess
import sys
import tty

import pytest
from cgsim import simstate
from test_modem_emulator import chat


class StandaloneModem:
    """`cellguard emulator --state FILE` in its own process, talked to over its pty."""

    def __init__(self, state, *extra):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cgsim.emulator", "--dialect", "bg96", "--zero-delays", "--state", str(state),
             *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        first = self.proc.stdout.readline()  # the announcement is the event: no start-up time limit
        assert " on /dev/" in first, first + self.proc.stderr.read()
        self.fd = os.open(first.split()[4], os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.fd)
        chat(self.fd, b"ATE0", timeout=60)
        chat(self.fd, b"AT+CMEE=1", timeout=60)

    def at(self, cmd: bytes) -> bytes:
        return chat(self.fd, cmd, until=b"\r\n", timeout=60).strip()

    def ask(self, cmd: bytes) -> bytes:
        got = chat(self.fd, cmd, timeout=60)
        return got.replace(b"OK", b"").strip()

    def kill9(self) -> None:
        os.close(self.fd)
        self.proc.send_signal(signal.SIGKILL)  # no clean shutdown: what was saved is what survives
        self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def modem_at(tmp_path):
    started = []

    def start(*extra):
        m = StandaloneModem(tmp_path / "sim.json", *extra)
        started.append(m)
        return m

    yield start
    for m in started:
        if m.proc.poll() is None:
            m.kill9()


def test_pin_lock_and_retry_counters_survive_a_kill_9(modem_at):
    m = modem_at()
    assert m.ask(b"AT+CPIN?") == b"+CPIN: READY"
    assert m.at(b'AT+CLCK="SC",1,"1234"') == b"OK"  # the provisioning tool turns the PIN lock on...
    assert m.at(b'AT+CPWD="SC","1234","8642"') == b"OK"  # ...and sets the device's own PIN
    assert m.at(b'AT+CPWD="SC","0000","1111"') == b"+CME ERROR: 16"  # one wrong try: 2 left
    m.kill9()

    again = modem_at()
    assert again.ask(b"AT+CPIN?") == b"+CPIN: SIM PIN"  # locked at power-up, as the unit left it
    assert again.ask(b'AT+QPINC="SC"') == b'+QPINC: "SC",2,10'
    assert again.at(b'AT+CPIN="1234"') == b"+CME ERROR: 16"  # the factory PIN no longer opens it
    assert again.at(b'AT+CPIN="8642"') == b"OK"
    again.kill9()
    assert modem_at().ask(b'AT+QPINC="SC"') == b'+QPINC: "SC",3,10'  # the right PIN reset the counter


def test_the_pin_option_only_shapes_a_new_sim(modem_at, tmp_path):
    modem_at("--pin", "1111").kill9()
    assert json.loads((tmp_path / "sim.json").read_text())["pin"] == "1111"
    m = modem_at("--pin", "2222")  # the SIM in the slot keeps its PIN; the option made the first one
    assert m.at(b'AT+CPIN="1111"') == b"OK"


def test_a_state_file_that_is_not_a_sims_is_refused_at_once(tmp_path):
    for junk in (b"{not json", json.dumps({"pin": 1234}).encode(), b"x" * 100_000):
        (tmp_path / "sim.json").write_bytes(junk)
        proc = subprocess.run(
            [sys.executable, "-m", "cgsim.emulator", "--state", str(tmp_path / "sim.json")],
            capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 2 and "--state:" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        with pytest.raises(simstate.SimStateError):
            simstate.load(tmp_path / "sim.json")
