"""`make bench`: run every bench/bench_*.py, print one table, write the figures as JSON.

Each bench module has `run() -> dict[str, number]`: figure name -> value, where every figure that
has an anchor is measured beside it in the same run and reported as a ratio too. A module may also
have `GOALS = {name: (op, bound)}` (op is "<=" or ">=" or "=="); the table marks each figure
that meets or misses its goal. A module that fails is reported, and the run exits non-zero.

The bench modules use the test harness (host_tests) and firmware modules under CPython: `make bench`
puts host_tests, host_tests/mp_support and firmware/lib on PYTHONPATH for them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import operator
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"
_OPS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq}


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=REPO / "build" / "bench.json")
    parser.add_argument("only", nargs="*", help="run only bench modules whose name contains this")
    args = parser.parse_args(argv)

    results: dict[str, object] = {}
    goals: dict[str, tuple[str, float]] = {}
    failed = []
    paths = sorted(BENCH_DIR.glob("bench_*.py"))
    if args.only:
        paths = [p for p in paths if any(o in p.stem for o in args.only)]
    for path in paths:
        started = time.monotonic()
        try:
            module = load(path)
            results.update(module.run())
            goals.update(getattr(module, "GOALS", {}))
        except Exception:
            failed.append(path.name)
            traceback.print_exc()
        print(f"# {path.name}: {time.monotonic() - started:.1f} s", file=sys.stderr)

    width = max((len(k) for k in results), default=10)
    print(f"{'figure':<{width}}  {'value':>14}  goal")
    for key in sorted(results):
        goal = ""
        if key in goals:
            op, bound = goals[key]
            ok = _OPS[op](results[key], bound)
            goal = f"{op} {bound}  {'met' if ok else 'MISSED'}"
        print(f"{key:<{width}}  {fmt(results[key]):>14}  {goal}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.json.relative_to(REPO) if args.json.is_relative_to(REPO) else args.json}")
    if failed:
        print(f"bench modules that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
