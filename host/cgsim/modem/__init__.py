"""The emulated cellular modem on a pty (docs/modem.md, "The emulator").

    from cgsim.modem import Delays, ModemEmulator, Network, Sim
    with ModemEmulator("bg96", delays=Delays.zero()) as emu:
        ...                              # point the firmware's UART at emu.path

Layout: core.py the modem (pty, command line, power, restarts), gpp.py the 3GPP commands,
dialects/ one module per vendor (registered through dialect.register), sim.py the SIM card,
network.py the network and registration, sockets.py the UDP bridge, faults.py fault injection,
cli.py `cellguard emulator`.
"""

from .atcmd import AtError, Prompt, split_args
from .core import DEFAULT_IMEI, Delays, ModemEmulator
from .dialect import Dialect, names, register, unregister
from .dialects import load_all as _load_dialects
from .network import Network
from .sim import Sim
from .sockets import UdpFaults

_load_dialects()

__all__ = [
    "DEFAULT_IMEI",
    "AtError",
    "Delays",
    "Dialect",
    "ModemEmulator",
    "Network",
    "Prompt",
    "Sim",
    "UdpFaults",
    "names",
    "register",
    "split_args",
    "unregister",
]
