"""The SIM lock while the unit is online: a modem restart reopens no data session before the lock has
passed again. A foreign SIM swapped in (the modem restarts on a swap) stops the unit until the right
SIM is back; the right SIM with its PIN lock asks for the device PIN after a restart, and gets it.

The firmware runs on the MicroPython unix port against the emulated modem on a pty; the hub is the
real one on 127.0.0.1. The swap or restart is done from a host thread once the hub has accepted
the first readings.
"""

from __future__ import annotations

import io
import threading
import time

import pytest
from cghub import server as hubmod
from modem_fixtures import Sim, emulated_modem
from test_app import accepted, fresh_sim, run_app
from test_simlock import PDP_COMMANDS, Unit

pytestmark = pytest.mark.timeout(300)  # the apps' loops end at their events; bounds for a loaded machine
RUN_MS = 120000  # how long an app loop may run before its `until` holds: only stops a hang

@pytest.fixture
def unit(tmp_path):
    return Unit(tmp_path)


@pytest.fixture
def hub_server(unit):
    hub = hubmod.Hub(hubmod.HubStore(unit.hub_db), io.StringIO())
    with hubmod.HubServer(hub) as server:
        yield hub, server


FOREIGN = Sim(iccid="89882806660000011116", imsi="901280000011111")


def wait_for(predicate, timeout_s=30.0) -> bool:
    """Poll a host-side condition (the hub's counters, the emulator's record) until it holds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def readings(hub) -> list[bytes]:
    return [bytes.fromhex(m["payload_hex"]) for m in accepted(hub) if m["type"] == "reading"]


def in_order_once(got: list[bytes]) -> bool:
    return got == [b"reading-%d" % i for i in range(1, len(got) + 1)]


# The loop stops once the unit has been seen locked and is online again with nothing left to send.
SEEN_LOCKED_THEN_ONLINE = "(seen.append(a.state) or True) and 'locked' in seen and a.state == 'online' and " \
    "a.box.pending() == 0 and a.lock.outcome == 'OK'"


def test_foreign_sim_swapped_in_while_online_gets_no_data_session(unit, hub_server):
    hub, server = hub_server
    sim = fresh_sim()
    with emulated_modem("bg96", sim=sim) as emu:
        unit.provision(emu)
    sim.unlocked = False
    with emulated_modem("bg96", sim=sim) as emu:
        marks = {}

        def swap_then_restore():
            if not wait_for(lambda: hub.counters["accepted"] >= 3):
                return
            swapped = threading.Event()

            def swap():
                # In the emulator's thread, at one point of its command stream: the mark, what went
                # out before it, and the swap. A QISEND still waiting for its payload is cut short by
                # the restart: its datagram never leaves.
                marks["swap"] = len(emu.commands)
                qisends = [c for c in emu.commands if c.startswith("AT+QISEND")]
                marks["sent"] = len(qisends) - (emu._payload is not None)
                emu.sim = FOREIGN
                emu._reboot()  # the modem restarts, as on a real SIM swap
                swapped.set()

            emu.call(swap)
            if not swapped.wait(30):
                return
            iccid_reads = lambda: len([c for c in emu.commands[marks["swap"]:] if c.startswith("AT+QCCID")])  # noqa: E731
            # The unit has noticed the restart (the lock's check reads the ICCID): whatever it sent
            # before went through the right SIM, and may still be on its way to the hub.
            if not wait_for(lambda: iccid_reads() >= 1):
                return
            # Every datagram that left the modem before the swap has arrived (an event: it was
            # once a 2 s wait, which a loaded machine's in-flight datagram outlasted).
            wait_for(lambda: hub.counters["received"] >= marks["sent"])
            marks["accepted"] = hub.counters["accepted"]
            # Refused again by the next checks: the unit is locked, and stays so.
            if not wait_for(lambda: iccid_reads() >= 4):
                return
            marks["locked"] = len(emu.commands)
            marks["accepted_locked"] = hub.counters["accepted"]
            emu.insert_sim(sim)

        worker = threading.Thread(target=swap_then_restore, daemon=True)
        worker.start()
        out = run_app(unit, emu, server.port, run_ms=RUN_MS, before="seen = []", until=SEEN_LOCKED_THEN_ONLINE)
        worker.join(5)
        assert "locked" in marks, out
        while_foreign = emu.commands[marks["swap"] : marks["locked"]]
        assert not [c for c in while_foreign if c.startswith(PDP_COMMANDS["bg96"])], while_foreign
        assert not [c for c in while_foreign if c.startswith("AT+QIOPEN")], while_foreign
        assert not [c for c in while_foreign if c.startswith("AT+QISEND")], while_foreign
    assert marks["accepted_locked"] == marks["accepted"]  # nothing reached the hub through it
    assert "STATE online PENDING 0" in out, out
    msgs = accepted(hub)
    tamper = [bytes.fromhex(m["payload_hex"]) for m in msgs if m["type"] == "tamper"]
    assert tamper == [b"\x01SIM_MISMATCH"]  # reported once, delivered with the right SIM back
    taken = int(out.split("READINGS ")[1].split()[0])
    got = readings(hub)
    assert len(got) == taken and in_order_once(got), got  # taken while locked, delivered after: none lost, none twice


def test_pin_locked_sim_is_unlocked_again_after_a_restart_while_online(unit, hub_server):
    hub, server = hub_server
    sim = fresh_sim()
    with emulated_modem("bg96", sim=sim) as emu:
        unit.provision(emu)
    assert sim.pin_enabled
    sim.unlocked = False
    with emulated_modem("bg96", sim=sim) as emu:
        marks = {}

        def restart():
            if wait_for(lambda: hub.counters["accepted"] >= 3):
                marks["restart"] = len(emu.commands)
                emu.reboot()  # the SIM asks for its PIN again

        threading.Thread(target=restart, daemon=True).start()
        # Online with the restarted modem, and three more readings delivered after it.
        until = "(a.modem.session > 1 and not mark and mark.append(n)) or (mark and n >= mark[0] + 3 " \
            "and a.box.pending() == 0)"
        out = run_app(unit, emu, server.port, run_ms=RUN_MS, before="mark = []", until=until)
        assert "restart" in marks, out
        after = emu.commands[marks["restart"] :]
        assert len([c for c in after if c.startswith("AT+CPIN=")]) == 1  # the PIN entered, once
    assert "STATE online PENDING 0" in out, out
    taken = int(out.split("READINGS ")[1].split()[0])
    got = readings(hub)
    assert len(got) == taken >= 5 and in_order_once(got), got  # every one delivered, once, in order
    assert sim.pin_left == 3


def test_restart_without_network_goes_offline_reattaches_and_drains_no_budget(unit, hub_server):
    """The restarted modem finds no network for a while (attach timeouts): the failure reaches the
    app, which goes offline and attaches again (lock, PIN, PDP) instead of failing send after send;
    the budget pays only for what the modem was handed, and every reading arrives once."""
    hub, server = hub_server
    sim = fresh_sim()
    with emulated_modem("bg96", sim=sim) as emu:
        unit.provision(emu)
    sim.unlocked = False
    with emulated_modem("bg96", sim=sim) as emu:
        marks = {}

        def restart_without_network():
            if wait_for(lambda: hub.counters["accepted"] >= 3):
                marks["restart"] = len(emu.commands)
                emu.network.registration_delay_s = 1.5  # 5 attach timeouts of 300 ms
                emu.reboot()

        threading.Thread(target=restart_without_network, daemon=True).start()
        until = "(a.modem.session > 1 and not mark and mark.append(n)) or (mark and n >= mark[0] + 3 " \
            "and a.box.pending() == 0)"
        out = run_app(
            unit, emu, server.port, run_ms=RUN_MS, before="mark = []\nm.attach_timeout_ms = 300", until=until
        )
        assert "restart" in marks, out
        handed = [c for c in emu.commands if c.startswith("AT+QISEND=")]
    assert "STATE online PENDING 0" in out, out
    assert "app: link lost" in out or "link lost" in out, out
    budget = int(out.split("BUDGET ")[1].split()[0])
    assert 0 < budget <= sum(int(c.split(",")[1]) for c in handed)
    taken = int(out.split("READINGS ")[1].split()[0])
    got = readings(hub)
    assert len(got) == taken and in_order_once(got), got


def test_sim_pulled_while_online_locks_and_the_same_sim_back_recovers(unit, hub_server):
    """The SIM pulled out of a running unit (no restart: the sends fail): the unit goes back
    through the lock, finds SIM_ABSENT, opens nothing, and recovers when the SIM is back."""
    hub, server = hub_server
    sim = fresh_sim()
    with emulated_modem("bg96", sim=sim) as emu:
        unit.provision(emu)
    sim.unlocked = False
    with emulated_modem("bg96", sim=sim) as emu:
        marks = {}

        def pull_then_reinsert():
            if not wait_for(lambda: hub.counters["accepted"] >= 3):
                return
            marks["pull"] = len(emu.commands)
            emu.remove_sim()
            sim_reads = lambda: len([c for c in emu.commands[marks["pull"]:] if c == "AT+CPIN?"])  # noqa: E731
            if not wait_for(lambda: sim_reads() >= 3):  # checked (and refused) again and again
                return
            marks["back"] = len(emu.commands)
            emu.insert_sim(sim)  # the modem restarts; the SIM asks for its PIN

        threading.Thread(target=pull_then_reinsert, daemon=True).start()
        out = run_app(unit, emu, server.port, run_ms=RUN_MS, before="seen = []", until=SEEN_LOCKED_THEN_ONLINE)
        assert "back" in marks, out
        while_out = emu.commands[marks["pull"] : marks["back"]]
        assert not [c for c in while_out if c.startswith((PDP_COMMANDS["bg96"], "AT+QIOPEN"))], while_out
    assert "STATE online PENDING 0" in out, out
    tamper = [bytes.fromhex(m["payload_hex"]) for m in accepted(hub) if m["type"] == "tamper"]
    assert tamper == [b"\x01SIM_ABSENT"]
    taken = int(out.split("READINGS ")[1].split()[0])
    got = readings(hub)
    assert len(got) == taken and in_order_once(got), got


def test_readings_are_stored_while_the_modem_is_dead_and_delivered_once_it_answers(unit, hub_server):
    """A modem that does not answer at boot (off, its power key not wired yet): the unit still takes
    its readings and keeps them; once the modem can be powered, every one reaches the hub, in order."""
    hub, server = hub_server
    sim = fresh_sim()
    with emulated_modem("bg96", sim=sim) as emu:
        unit.provision(emu)
    sim.unlocked = False
    with emulated_modem("bg96", sim=sim, powered=False) as emu:
        # The power key comes back (a technician fixes the wiring) once three readings were taken
        # with the modem dead; the loop ends when three more are delivered after it. While nothing
        # can answer, the ladder's wait after each reset is 0.3 s, not 3 s (a turn of the loop takes
        # a reading, and each turn runs the whole ladder); the power key gets the full wait back.
        until = "(n >= 3 and not fixed and (fixed.append(a.state) or setattr(engine, 'power_key', power_key) " \
            "or setattr(engine, 'reset_wait_ms', reset_wait_ms))) or (fixed and n >= 6 and a.box.pending() == 0)"
        out = run_app(unit, emu, server.port, run_ms=RUN_MS, until=until,
                      before="fixed = []\nengine.power_key = None\nengine.resync_attempts = 1\n"
                      "reset_wait_ms = engine.reset_wait_ms\nengine.reset_wait_ms = 300")
    assert "STATE online PENDING 0" in out, out
    got = readings(hub)
    taken = int(out.split("READINGS ")[1].split()[0])
    assert taken >= 6 and len(got) == taken and in_order_once(got), got


def test_the_hubs_mode_survives_a_reattach(unit, hub_server):
    """CONFIG 3 (mode: sign) from the hub holds through a modem restart and the re-attach after it."""
    from cghub import proto as hubproto

    hub, server = hub_server
    sim = fresh_sim()
    with emulated_modem("bg96", sim=sim) as emu:
        record = unit.provision(emu)
    hub.store.queue_command(record["key_id"], hubproto.config_record(3, 0))
    sim.unlocked = False
    with emulated_modem("bg96", sim=sim) as emu:

        def restart_once_signed():
            if wait_for(lambda: any(m["mode"] == "sign" for m in accepted(hub) if m["type"] == "reading")):
                emu.network.registration_delay_s = 1.5  # attach timeouts: the link goes down, the app re-attaches
                emu.reboot()

        threading.Thread(target=restart_once_signed, daemon=True).start()
        until = "(a.modem.session > 1 and not mark and mark.append(n)) or (mark and n >= mark[0] + 3 " \
            "and a.box.pending() == 0)"
        out = run_app(unit, emu, server.port, run_ms=RUN_MS, before="mark = []\nm.attach_timeout_ms = 300",
                      until=until)
    assert "STATE online PENDING 0" in out, out
    assert "link lost" in out, out  # through App._attach again, not only the socket's own restore
    modes = [m["mode"] for m in accepted(hub) if m["type"] == "reading"]
    first_signed = modes.index("sign")
    assert modes[first_signed:] == ["sign"] * (len(modes) - first_signed) and len(modes) - first_signed >= 4, modes
