"""The modem emulator's historical name, kept for its callers: `from cgsim.emulator import
Delays, ModemEmulator, Network, Sim` and `python -m cgsim.emulator --dialect bg96`. The emulator
lives in the cgsim.modem package (one module per vendor dialect)."""

from cgsim.modem import Delays, ModemEmulator, Network, Sim, UdpFaults, names, split_args  # noqa: F401
from cgsim.modem.cli import main

DIALECTS = names()

if __name__ == "__main__":
    raise SystemExit(main())
