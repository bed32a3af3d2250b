"""A busy console never stops the unit (docs/field-guide.md, "A busy console"): the virtual board
flashed to report every 2 s to a real hub, its console flooded with `status --json` by a sender that
never reads the port. The hub keeps hearing the unit at its interval; the console answers once the
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

pytestmark = pytest.mark.timeout(240)

INTERVAL_S = 2
SLACK_S = 3  # a turn of the main loop, the modem's send, the hub's answer: well under a second each
FLOOD_S = 20


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
        before = len(readings(hub))
        start = time.time()
        flooder.start()
        time.sleep(FLOOD_S)  # the flood's length is the test's subject, not a wait for an event
        stop.set()
        flooder.join(timeout=10)
        end = time.time()
        during = [t for t in readings(hub) if start <= t <= end]
        assert sent[0] > 100_000, sent[0]  # a real flood: well over the console's share of any turn
        assert len(readings(hub)) > before and during, "the hub heard nothing during the flood"
        times = [start, *during, end]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert max(gaps) <= INTERVAL_S + SLACK_S, gaps

        # Once the flood stops the console answers (status.py repeats a line the console said it dropped).
        answer = run_tool("status", "--port", board.port, "--command", "version", "--timeout", "20")
        assert answer.returncode == 0 and "cellguard " in answer.stdout, answer.stdout + answer.stderr
        page = run_tool("status", "--port", board.port, "--json")
        assert page.returncode == 0, page.stdout + page.stderr
    finally:
        if server is not None:
            server.stop()
        board.stop()
