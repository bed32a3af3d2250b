"""A busy console never stops the unit (docs/field-guide.md, "A busy console"): the virtual board
flashed to report every 2 s to a real hub, its console flooded with `status --json` by a sender that
never reads the port. The hub keeps hearing the unit through the flood; the console answers once the
flood stops."""

import io
import json
import socket
import threading
import time

import pytest
import serial
from cghub import server as hubmod
from vboard import Board, flash, run_tool

pytestmark = pytest.mark.timeout(480)  # the waits below are events; this only stops a hang

INTERVAL_S = 2
FLOOD_S = 8  # the flood lasts this long at least (four report intervals)...
FLOOD_BYTES = 100_000  # ...and this much at least: well over the console's share of any turn
HEARD = 3  # ...and on until the hub has heard the unit this often while it lasted


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readings(hub: hubmod.Hub) -> list[float]:
    return [m["at"] for m in map(json.loads, hub.out.getvalue().splitlines()) if m["type"] == "reading"]


def wait_for(what, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_flooded_console_keeps_the_unit_reporting_and_answers_after(tmp_path):
    port = free_udp_port()
    board = Board(tmp_path)
    server = None
    try:
        proc = flash(board, tmp_path / "master.key", "--report-interval", str(INTERVAL_S), "--hub", f"127.0.0.1:{port}")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        hub = hubmod.Hub(hubmod.HubStore(board.workdir / "hub.sqlite"), io.StringIO())
        server = hubmod.HubServer(hub, port=port).start()
        wait_for(lambda: len(readings(hub)) >= 2, 90)  # online, reporting

        stop = threading.Event()
        sent = [0]

        def flood() -> None:  # writes and never reads: the unit's answers go nowhere
            with serial.Serial(board.port, write_timeout=1) as s:
                while not stop.is_set():
                    try:
                        sent[0] += s.write(b"status --json\r" * 64)
                    except serial.SerialTimeoutException:
                        pass

        flooder = threading.Thread(target=flood, daemon=True)
        start = time.time()
        flooder.start()
        # A unit the flood starves is not heard again, and the bound fails the test. How many
        # readings a window of wall time holds is the machine's speed, not the unit's: a loaded CI
        # machine stretched the gaps between them (they were once held to the interval + 3 s).
        try:
            wait_for(lambda: time.time() - start >= FLOOD_S and sent[0] > FLOOD_BYTES
                     and len([t for t in readings(hub) if t >= start]) >= HEARD, 300)
        finally:
            stop.set()
            flooder.join(timeout=10)
        end = time.time()
        during = [t for t in readings(hub) if start <= t <= end]
        assert sent[0] > FLOOD_BYTES and len(during) >= HEARD, (sent[0], during)

        # Once the flood stops the console answers (status.py repeats a line the console said it dropped).
        answer = run_tool("status", "--port", board.port, "--command", "version", "--timeout", "60")
        assert answer.returncode == 0 and "cellguard " in answer.stdout, answer.stdout + answer.stderr
        page = run_tool("status", "--port", board.port, "--json")
        assert page.returncode == 0, page.stdout + page.stderr
    finally:
        if server is not None:
            server.stop()
        board.stop()
