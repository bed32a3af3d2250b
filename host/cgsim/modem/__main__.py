"""python -m cgsim.modem: the same as `cellguard emulator`."""

from .cli import main

raise SystemExit(main())
