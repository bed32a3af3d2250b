"""`cellguard emulator` (also `python -m cgsim.emulator`): an emulated modem on a pty until Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import time

from . import Delays, ModemEmulator, Network, Sim, names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="An emulated cellular modem on a pty.")
    parser.add_argument("--dialect", choices=names(), default="bg96")
    parser.add_argument("--zero-delays", action="store_true", help="answer at once (tests, benches)")
    parser.add_argument("--registration-delay", type=float, default=2.0, help="seconds to register")
    parser.add_argument("--roaming", action="store_true")
    parser.add_argument("--deny", action="store_true", help="the network rejects the attach")
    parser.add_argument("--pin", help="enable the SIM PIN lock with this PIN")
    parser.add_argument("--state", help="keep the SIM's PIN, lock and counters in this file across restarts")
    parser.add_argument(
        "--field-traffic", action="store_true", help="whole restart banners and the URCs real units send"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every command")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    new_sim = {"pin": args.pin, "pin_enabled": True} if args.pin else {}
    if args.state:  # a SIM keeps its state across power cycles (cgsim.simstate); --pin only shapes a new one
        from cgsim import simstate

        try:
            sim = simstate.persistent_sim(args.state, **new_sim)
        except (OSError, simstate.SimStateError) as e:
            parser.error(f"--state: {e}")
    else:
        sim = Sim(**new_sim)
    network = Network(
        registration_delay_s=0 if args.zero_delays else args.registration_delay,
        roaming=args.roaming,
        deny=args.deny,
    )
    emu = ModemEmulator(
        args.dialect,
        sim=sim,
        network=network,
        delays=Delays.zero() if args.zero_delays else Delays(),
        field_traffic=args.field_traffic,
    )
    path = emu.start()
    try:  # from here on Ctrl-C is a clean stop, even one that arrives right after the announcement
        print(f"{args.dialect} modem emulator on {path}  (reset wire: udp 127.0.0.1:{emu.reset_port})", flush=True)
        print(f"talk to it with e.g. `python -m serial.tools.miniterm {path} 115200`; Ctrl-C stops", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()
    return 0
