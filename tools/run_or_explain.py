"""Run a host tool, or say plainly that it is not built yet (never a fake success).

Make targets point here so that a target whose tool a later issue delivers fails with a clear
message instead of a Python traceback about a missing file.
"""

import runpy
import sys
from pathlib import Path


def main() -> int:
    if len(sys.argv) < 2:
        print("usage: run_or_explain.py TOOL [ARGS...]", file=sys.stderr)
        return 2
    tool = Path(sys.argv[1])
    if not tool.exists():
        print(f"not yet: {tool} is not built yet (see `issues`); nothing was done.", file=sys.stderr)
        return 3
    sys.argv = [str(tool), *sys.argv[2:]]
    sys.path.insert(0, str(tool.parent))
    runpy.run_path(str(tool), run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
