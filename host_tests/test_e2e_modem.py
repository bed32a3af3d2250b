"""End to end through the emulated modem: firmware on the MicroPython unix port -> AT commands on a
pty -> emulated modem -> real UDP -> lossy relay -> hub.

Faults: 30 % loss both ways, duplicates and reordering in the relay, spontaneous modem resets during
the run, and power cuts of the device's littlefs aimed at a sequence reservation and at the middle of
a send (test_e2e_udp's device loop), each asserted to have landed there. Every reading whose enqueue completed reaches the
hub exactly once, none twice, and no sequence number ever carries two different datagrams.
"""

from __future__ import annotations

import threading

import pytest
from cghub.server import HubServer
from cgsim.udprelay import Faults, Relay
from harness import run_micropython
from hubkit import make_hub
from modem_fixtures import driver_script, emulated_modem
from test_e2e_udp import check_cuts_hit, check_exactly_once, device_script

MODEM_SOCK = """
attach()
sock = m.open_udp()
"""


def _reset_modem_now_and_then(emu, hub, stop: threading.Event, resets: list[int]) -> None:
    # A spontaneous modem restart (brown-out, watchdog) each time the hub has accepted 6 more
    # messages, i.e. in the middle of the device's traffic.
    for threshold in (4, 10, 16):
        while not stop.is_set() and hub.counters["accepted"] < threshold:
            stop.wait(0.01)
        if stop.is_set():
            return
        emu.reboot()
        resets.append(threshold)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("dialect,seed", [("bg96", 5), ("nrf91", 6)])
def test_through_the_modem_with_faults(tmp_path, dialect, seed):
    hub = make_hub(tmp_path)
    faults = Faults(loss=0.3, duplicate=0.1, reorder=0.1)
    stop = threading.Event()
    resets: list[int] = []
    with emulated_modem(dialect) as emu, HubServer(hub) as server, Relay(server.port, faults, seed=seed) as relay:
        script = driver_script(emu, device_script(MODEM_SOCK), at_timeout_ms=1500)
        resetter = threading.Thread(target=_reset_modem_now_and_then, args=(emu, hub, stop, resets), daemon=True)
        resetter.start()
        try:
            out = run_micropython(script, heapsize="4M", timeout=200, args=(relay.port, 24, 6, seed, 1))
        finally:
            stop.set()
            resetter.join(5)
    lines = out.splitlines()
    check_exactly_once(lines, hub, relay)
    assert int(lines[-1].split()[1]) >= 4  # power cuts really happened
    check_cuts_hit(lines, ("reserve", "seal", "transmit"))  # in a reservation, in the middle of a send
    assert len(resets) >= 2, "the modem was not reset during the run"
    assert emu.reboots >= 2
