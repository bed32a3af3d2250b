"""`cellguard`: one command line for the host side, in the style of `idf.py` and `mpremote`.

    cellguard flash [--board NAME] [--port PORT]     put the firmware on a board (no port: the virtual board)
    cellguard status --port PORT [--json]            a unit's status page, as a technician reads it
    cellguard hub serve --db hub.sqlite              the hub (also register-device, new-kek, rotate-kek, queue, publish, stats)
    cellguard <command> --help                       each command's own options

Each command is a module's `main(argv)`; the module is imported only when its command runs, so
`cellguard hub serve` on a server never imports the developer tools (nor mpremote).
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, one line for `cellguard --help`). The order is the order of the help text.
COMMANDS: dict[str, tuple[str, str]] = {
    "flash": ("cgdev.flash", "flash a board through mpremote, or the virtual board"),
    "status": ("cgdev.status", "read a unit's status page over its serial console"),
    "provision": ("cgdev.provision", "bind SIM and modem to a unit and register its key with the hub"),
    "image": ("cgdev.image", "build, sign, verify and inspect firmware images (imgtool / MCUboot)"),
    "bundle": ("cgdev.bundle", "the pinned device libraries, staged for a board"),
    "hub": ("cghub.server", "the hub: serve | register-device | new-kek | rotate-kek | queue | publish | stats"),
    "emulator": ("cgsim.modem.cli", "an emulated cellular modem on a pty"),
    "virtual-board": ("cgsim.virtual_board", "a virtual board (MicroPython on littlefs) on a pty"),
    "demo": ("cgdev.demo", "hub + emulated modem + virtual board, end to end"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: cellguard <command> [options]   (cellguard <command> --help for its options)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_mod, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"cellguard: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    sys.argv[0] = f"cellguard {name}"  # argparse names the program after argv[0] in each command's --help
    try:
        return module.main(rest) or 0
    except KeyboardInterrupt:  # Ctrl-C is how a person stops a serving command: one line, not a traceback
        print(f"cellguard {name}: interrupted", file=sys.stderr)
        return 130
