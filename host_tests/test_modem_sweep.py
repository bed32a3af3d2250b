"""Random combinations of recoverable faults, every dialect: the MicroPython driver, retrying as an
application would on a typed ModemError, always completes a UDP round trip in bounded time.
`make test` runs a sample of seeds; `make soak` runs them all."""

import random

import pytest
from modem_fixtures import DIALECTS, emulated_modem, run_driver, udp_echo_server

SAMPLE = range(6)
ALL = range(6, 100)

SEND = {"nrf91": "AT#XSENDTO", "bg96": "AT+QISEND", "sim7080": "AT+CASEND", "sara-r4": "AT+USOST"}
ATTACH = ["AT+CMEE", "AT+CEREG", "ATE0"]

APP = """
ok = False
for attempt in range(4):
    try:
        attach()
        s = m.open_udp()
        s.sendto(b'sweep', '127.0.0.1', ECHO_PORT)
        got = s.recvfrom(2000)
        while got is not None and got[0] != b'sweep':
            got = s.recvfrom(2000)
        if got is not None:
            ok = True
            break
        print('NO-ECHO', attempt)
    except at.ModemError as e:
        print('RETRY', attempt, type(e).__name__, e)
print('DONE', ok)
"""


def inject(emu, rng: random.Random) -> list[str]:
    dialect = emu.dialect
    faults = {
        "drop": lambda: emu.drop_response(rng.choice(ATTACH)),
        "delay": lambda: emu.delay_response(rng.choice(ATTACH), rng.uniform(0, 2)),
        "split": lambda: setattr(emu, "split_writes", True),
        "noise": lambda: emu.inject(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))),
        "burst": lambda: emu.urc_burst(rng.choice(ATTACH + [SEND[dialect]]), ["+CEREG: 1", "+CPIN: READY"]),
        "reboot": lambda: emu.reboot_during(rng.choice(ATTACH + [SEND[dialect]])),
        "dup": lambda: setattr(emu.udp, "duplicate_in", 1),
        "prompt": lambda: emu.drop_prompt(SEND[dialect]),
    }
    chosen = rng.sample(sorted(faults), rng.randint(1, 3))
    for name in chosen:
        faults[name]()
    return chosen


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", SAMPLE)
def test_random_faults_then_round_trip(seed):
    check_seed(seed)


@pytest.mark.soak
@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", ALL)
def test_random_faults_then_round_trip_soak(seed):
    check_seed(seed)


def check_seed(seed):
    rng = random.Random(seed)
    dialect = DIALECTS[seed % len(DIALECTS)]
    with emulated_modem(dialect, seed=seed) as emu, udp_echo_server() as echo:
        chosen = inject(emu, rng)
        out = run_driver(emu, APP, echo_port=echo.port, timeout=90)
    assert "DONE True" in out, (dialect, chosen, out)
