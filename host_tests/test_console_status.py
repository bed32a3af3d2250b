"""cellguard status against the virtual board: what it prints matches the device's own state."""

import json
import os
import pty

import pytest
from cellguard.modemstatus import REGISTRATION
from vboard import Board, flash, run_tool

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def flashed(tmp_path):
    board = Board(tmp_path)
    try:
        proc = flash(board, tmp_path / "master.key")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield board
    finally:
        board.stop()


def test_status_json_matches_device_state(flashed):
    board = flashed
    snap = json.loads(run_tool("status", "--port", board.port, "--json").stdout)
    # What the device itself holds, read through mpremote (it stops main.py and opens the REPL).
    facts = json.loads(board.mpremote(
        "exec",
        "import json, sys\n"
        "from cellguard import VERSION, keys\n"
        "print(json.dumps({'device': keys.device_id(),"
        " 'board': json.load(open('board.json'))['name'], 'version': VERSION,"
        " 'console': json.load(open('state/console.json')),"
        " 'rt': '%d.%d.%d' % sys.implementation.version[:3]}))",
    ).stdout.strip().splitlines()[-1])
    assert snap["device"]["id"] == facts["device"]  # the provisioned identity
    assert snap["device"]["board"] == facts["board"]
    assert snap["firmware"]["version"] == facts["version"]
    assert snap["device"]["runtime"] == "micropython " + facts["rt"]
    assert facts["console"] == {"locked": False} and snap["console"]["mode"].startswith("development")
    # A development board left at the REPL by mpremote: status.py soft-resets it into the console.
    text = run_tool("status", "--port", board.port)
    assert text.returncode == 0
    assert f"id {facts['device']}" in text.stdout and "console     development (unlocked)" in text.stdout


def test_wrong_port_is_a_clear_message(tmp_path):
    proc = run_tool("status", "--port", str(tmp_path / "ttyNOPE"))
    assert proc.returncode == 2 and "cannot open" in proc.stderr and "wrong port" in proc.stderr


def test_silent_device_is_a_clear_message():
    master, slave = pty.openpty()  # a port with nothing cellguard behind it
    try:
        proc = run_tool("status", "--port", os.ttyname(slave), "--timeout", "1")
        assert proc.returncode == 3 and "does not answer" in proc.stderr
    finally:
        os.close(master)
        os.close(slave)


class _AnsweringPort:
    """A port whose unit answers `status --json` with the given line (no board, no pty)."""

    def __init__(self, line: bytes):
        self.line, self.buf = line, b""

    @property
    def in_waiting(self) -> int:
        return len(self.buf)

    def write(self, data: bytes) -> None:
        self.buf += data.replace(b"\r", b"\r\n") + self.line + b"\r\ncellguard> "

    def read(self, n: int) -> bytes:
        chunk, self.buf = self.buf[:n], self.buf[n:]
        return chunk

    def close(self) -> None:
        pass


def test_a_status_line_that_does_not_parse_is_the_tools_error_not_a_traceback():
    # A unit resetting into its trial image cut its `status --json` line with its boot output: the
    # demo (and any caller) takes StatusToolError for "ask again" (it once died of a JSONDecodeError).
    from cgdev import status as status_tool

    client = status_tool.ConsoleClient("loop://", timeout=5)
    client.ser = _AnsweringPort(b'{"firmware": {"version": "0.1.0"}}')
    assert client.status() == {"firmware": {"version": "0.1.0"}}
    client.ser = _AnsweringPort(b'{"firmware": {"version": "0.1cgboot: booted slot b"}')
    with pytest.raises(status_tool.StatusToolError) as err:
        client.status()
    assert err.value.code == 3 and "does not parse" in str(err.value)


class _LossyPort(_AnsweringPort):
    """A port that loses the first `lost` lines written to it (a board's RX buffer still full of a
    flood's backlog drops bytes, and no "console busy" line says so), and answers the others."""

    def __init__(self, line: bytes, lost: int):
        super().__init__(line)
        self.lost, self.writes = lost, []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        if self.lost:
            self.lost -= 1
            return
        super().write(data)


def test_a_read_only_line_lost_at_the_port_is_sent_again_a_service_line_never(monkeypatch):
    # After a flood the console answered nothing to `version` for 60 s (test_console_flood, once in a
    # few runs): the line was lost at the port. A technician presses Enter again; so does the tool,
    # for a line that changes nothing. A service answer is one attempt: sent once, whatever happens.
    from cgdev import status as status_tool

    monkeypatch.setattr(status_tool, "RESEND_SILENT_S", 0.2, raising=False)
    client = status_tool.ConsoleClient("loop://", timeout=30)
    client.ser = _LossyPort(b"cellguard 0.1.0", lost=2)
    assert client.command("version").strip() == "cellguard 0.1.0"
    assert client.ser.writes == [b"version\r"] * 3
    client = status_tool.ConsoleClient("loop://", timeout=1)
    client.ser = _LossyPort(b"service: opened", lost=1)
    with pytest.raises(status_tool.StatusToolError):
        client.command("service open-repl 00ff")
    assert client.ser.writes == [b"service open-repl 00ff\r"]


def test_status_shows_the_emulated_modem_masked(tmp_path):
    from cgsim import modem as modem_emulator

    emu_sim = modem_emulator.Sim()
    imei = "350457790123457"  # the emulator's default IMEI
    board = Board(tmp_path, modem="bg96")  # the emulated modem on the board's UART
    try:
        assert flash(board, tmp_path / "master.key").returncode == 0
        page = run_tool("status", "--port", board.port)
        snap = json.loads(run_tool("status", "--port", board.port, "--json").stdout)
    finally:
        board.stop()
    assert snap["modem"]["imei"] == "*" * (len(imei) - 4) + imei[-4:]
    assert snap["modem"]["iccid"].endswith(emu_sim.iccid[-4:]) and set(snap["modem"]["iccid"][:-4]) == {"*"}
    # The driver publishes the +CEREG number, the status refresh its name (whichever ran last: the
    # page shows both by name); a loaded machine's snapshot caught the driver's.
    reg = snap["modem"]["registration"]
    assert REGISTRATION.get(reg, reg) in ("searching", "home"), reg
    assert snap["modem"]["signal"].endswith("dBm")
    for full in (imei, emu_sim.iccid):
        assert full not in page.stdout + json.dumps(snap)
