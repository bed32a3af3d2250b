"""The application loop end to end: a provisioned unit on the MicroPython unix port passes its SIM
lock, attaches through the emulated modem, and its readings reach the hub over real UDP. A unit
whose SIM was swapped sends nothing, and its tamper report reaches the hub only once the right SIM
is back.
"""

from __future__ import annotations

import io
import json

import pytest
from cghub import server as hubmod
from modem_fixtures import Sim, emulated_modem
from test_simlock import FACTORY_PIN, PDP_COMMANDS, Unit

pytestmark = pytest.mark.timeout(240)

APP_RUN = """
from cellguard import app, status
def sensor():
    global n
    n += 1
    return b'reading-%%d' %% n
n = 0
a = app.App(m, '127.0.0.1', %(hub_port)d, apn='iot.test', read_sensor=sensor, interval_ms=%(interval)d,
            version='test-1', retry_ms=%(retry)d, on_healthy=lambda: print('HEALTHY'))
%(before)s
t = runtime.ticks_ms()
while runtime.ticks_diff(runtime.ticks_ms(), t) < %(run_ms)d:
    a.step(100)
    if %(until)s:
        break
print('STATS', a.box.stats if a.box else None, status.snapshot().get('events'))
print('STATE', a.state, 'PENDING', a.box.pending() if a.box else -1, 'READINGS', n)
print('BUDGET', a.box._budget_used if a.box else -1)
from cellguard import statuspage
print([x for x in statuspage.render(status.snapshot()).splitlines() if x.startswith('sequence')][0])
"""


# An app loop runs until its `until` holds; run_ms only stops a hang (a loaded machine is slow to get
# there: 8 s once ran out before the unit was online).
# Locked, then ten more turns of the loop (about a second) in which it must stay so: counted in turns,
# not milliseconds (1.5 s of wall time once did not reach the lock on a loaded machine).
LOCKED_A_WHILE = "a.state == 'locked' and (turns.append(1) or len(turns) >= 10)"


def run_app(unit, emu, hub_port, run_ms=60000, interval=300, retry=200, until="False", before="") -> str:
    return unit.run(
        emu,
        APP_RUN
        % {
            "hub_port": hub_port,
            "interval": interval,
            "retry": retry,
            "run_ms": run_ms,
            "until": until,
            "before": before,
        },
    )


@pytest.fixture
def hub_server(unit):
    store = hubmod.HubStore(unit.hub_db)
    hub = hubmod.Hub(store, io.StringIO())
    with hubmod.HubServer(hub) as server:
        yield hub, server


@pytest.fixture
def unit(tmp_path):
    return Unit(tmp_path)


def accepted(hub) -> list[dict]:
    return [json.loads(x) for x in hub.out.getvalue().splitlines()]


def fresh_sim() -> Sim:
    return Sim(iccid="89882806660000044448", imsi="901280000044444", pin=FACTORY_PIN)


def test_readings_reach_the_hub_and_the_unit_is_healthy(unit, hub_server):
    hub, server = hub_server
    sim = fresh_sim()
    with emulated_modem("bg96", sim=sim) as emu:
        record = unit.provision(emu, device_id="app-1")
    sim.unlocked = False  # power cycle
    with emulated_modem("bg96", sim=sim) as emu:
        out = run_app(unit, emu, server.port, until="a.healthy and n >= 3 and a.box.pending() == 0")
    assert "HEALTHY" in out
    assert "STATE online PENDING 0" in out, out
    msgs = accepted(hub)
    kinds = [m["type"] for m in msgs]
    assert kinds[0] == "hello" and kinds.count("reading") >= 3
    assert all(m["key_id"] == record["key_id"] and not m["unlocked"] for m in msgs)
    readings = [bytes.fromhex(m["payload_hex"]) for m in msgs if m["type"] == "reading"]
    assert readings[:3] == [b"reading-1", b"reading-2", b"reading-3"]  # in order, none twice


def test_swapped_sim_sends_nothing_and_tamper_report_waits_for_the_right_sim(unit, hub_server):
    hub, server = hub_server
    sim = fresh_sim()
    with emulated_modem("bg96", sim=sim) as emu:
        unit.provision(emu)
    sim.unlocked = False
    foreign = Sim(iccid="89882806660000011116", imsi="901280000011111")
    with emulated_modem("bg96", sim=foreign) as emu:
        out = run_app(unit, emu, server.port, before="turns = []", until=LOCKED_A_WHILE)
        assert not emu.commands_matching(PDP_COMMANDS["bg96"])
        assert not emu.commands_matching("AT+QIOPEN")
    assert "STATE locked" in out
    assert accepted(hub) == []  # nothing left the unit through the foreign SIM
    # Readings taken while locked are kept; so is the tamper report. With the right SIM back:
    with emulated_modem("bg96", sim=sim) as emu:
        out = run_app(unit, emu, server.port, until="a.state == 'online' and a.box.pending() == 0")
    assert "STATE online PENDING 0" in out, out
    msgs = accepted(hub)
    tamper = [m for m in msgs if m["type"] == "tamper"]
    assert len(tamper) == 1
    payload = bytes.fromhex(tamper[0]["payload_hex"])
    assert payload[0] == 1 and payload[1:] == b"SIM_MISMATCH"  # event code 1, foreign SIM or modem
    readings = [bytes.fromhex(m["payload_hex"]) for m in msgs if m["type"] == "reading"]
    assert b"reading-1" in readings  # taken while locked, delivered later


def test_certification_unit_marks_every_message_unlocked(unit, hub_server):
    hub, server = hub_server
    sim = fresh_sim()
    with emulated_modem("bg96", sim=sim) as emu:
        unit.provision(emu, unlocked=True)
    with emulated_modem("bg96", sim=sim) as emu:
        out = run_app(unit, emu, server.port, until="a.healthy and n >= 1 and a.box.pending() == 0")
    assert "STATE online" in out
    msgs = accepted(hub)
    assert msgs and all(m["unlocked"] for m in msgs)


def test_certification_unit_marks_messages_sealed_before_the_first_check(unit, hub_server):
    """The tamper switch can fire before the lock has run (offline, just booted): what it seals
    then carries the U flag too, taken from the binding, not from a check not yet made."""
    hub, server = hub_server
    sim = fresh_sim()
    with emulated_modem("bg96", sim=sim) as emu:
        unit.provision(emu, unlocked=True)
    with emulated_modem("bg96", sim=sim) as emu:
        out = run_app(
            unit,
            emu,
            server.port,
            before="a._tamper_switch({'seq': 1, 't': 0, 'wipe': False})",
            until="a.healthy and a.box.pending() == 0",
        )
    assert "STATE online" in out, out
    msgs = accepted(hub)
    assert "tamper" in [m["type"] for m in msgs] and "hello" in [m["type"] for m in msgs]
    assert all(m["unlocked"] for m in msgs), msgs


def test_received_counter_shown_after_a_restart_is_the_highest_received(unit, hub_server):
    """`sequence ... received` is the highest sequence number the hub's datagrams carried: kept in
    the receive window across restarts, never the -1 of a fresh channel (a counter that went
    backwards is a finding for the technician)."""
    hub, server = hub_server
    sim = fresh_sim()
    with emulated_modem("bg96", sim=sim) as emu:
        unit.provision(emu)
    sim.unlocked = False
    with emulated_modem("bg96", sim=sim) as emu:
        first = run_app(unit, emu, server.port, until="n >= 2 and a.box.pending() == 0")
    # A restart that never gets online (a foreign SIM: the lock refuses, nothing is sent or received).
    foreign = Sim(iccid="89882806660000011116", imsi="901280000011111")
    with emulated_modem("bg96", sim=foreign) as emu:
        again = run_app(unit, emu, server.port, before="turns = []", until=LOCKED_A_WHILE)
    assert "STATE locked" in again, again

    def sequence(out: str) -> tuple[int, int]:
        line = next(x for x in out.splitlines() if x.startswith("sequence"))
        words = line.split()
        return int(words[2]), int(words[4])

    sent, received = sequence(first)
    assert received >= 1, first  # the hub's ACKs (HELLO's TIME, readings' ACKs)
    sent_after, received_after = sequence(again)
    assert sent_after >= sent and received_after >= received, again
