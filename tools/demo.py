"""`make demo`: hub, emulated modem and virtual board on this machine, end to end, no hardware.

Each step either happens or says `skipped: <why>` (a part that is not in this tree yet); the demo
exits 0 only when every step happened, so a skipped step can never pass for a working system.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))

import status as status_tool  # noqa: E402
import virtual_board  # noqa: E402

DEMO_DIR = REPO / "build" / "demo"


class Demo:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []
        self.results: list[tuple[str, str]] = []
        self.port = ""

    def record(self, step: str, outcome: str) -> None:
        self.results.append((step, outcome))
        print(f"[{len(self.results)}] {step}: {outcome}", flush=True)

    # -- steps --------------------------------------------------------------------------------
    def start_board(self) -> None:
        modem = "auto" if virtual_board.MODEM_EMULATOR.exists() else "none"
        proc, self.port = virtual_board.launch(self.workdir / "flash.img", self.workdir / "port",
                                               self.workdir / "virtual-board.log", modem=modem)
        self.procs.append(proc)
        detail = "with the emulated modem on its UART" if modem == "auto" else "no modem (tools/modem_emulator.py absent)"
        self.record("start the virtual board", f"on {self.port}, {detail}")
        if modem == "none":
            self.record("start the emulated modem", "skipped: tools/modem_emulator.py is not in this tree yet")

    def flash(self) -> None:
        proc = subprocess.run(
            [sys.executable, str(REPO / "tools" / "flash.py"), "--port", self.port,
             "--service-key", str(self.workdir / "service-master.key")],
            capture_output=True, text=True, timeout=600,
        )
        print("\n".join("    " + line for line in proc.stdout.splitlines()))
        if proc.returncode != 0:
            raise RuntimeError(f"flash failed:\n{proc.stderr}")
        skipped = [line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("skipped:")]
        self.record("flash (loader, trusted boot part, slot A, provisioning)",
                    "done" if not skipped else "partly: " + "; ".join(skipped))

    def hub_steps(self) -> None:
        hub = REPO / "tools" / "hub.py"
        why = "skipped: tools/hub.py is not in this tree yet (the messaging issue)"
        if hub.exists():
            why = "skipped: the hub is in the tree but not wired into the demo yet (tools/demo.py)"
        for step in ("start the hub", "attach and pass the SIM lock", "signed and encrypted readings accepted",
                     "signed update downloaded, trial-booted and confirmed"):
            self.record(step, why)

    def show_status(self) -> None:
        with status_tool.ConsoleClient(self.port, timeout=10) as client:
            client.attach()
            page = client.command("status")
        print("\n".join("    " + line for line in page.rstrip().splitlines()))
        self.record("the status a technician sees", "done")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=DEMO_DIR, help="state of this demo run (fresh each time)")
    args = parser.parse_args(argv)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    demo = Demo(args.workdir)
    t0 = time.monotonic()
    try:
        demo.start_board()
        demo.flash()
        demo.hub_steps()
        demo.show_status()
    except (RuntimeError, status_tool.StatusToolError) as e:
        demo.record("demo stopped", str(e))
        return 1
    finally:
        demo.stop()
    skipped = [s for s, outcome in demo.results if "skipped" in outcome]
    print(f"\nsummary ({time.monotonic() - t0:.1f} s): {len(demo.results) - len(skipped)} steps done, "
          f"{len(skipped)} skipped")
    if skipped:
        print("demo incomplete: skipped steps wait for parts not in this tree: " + "; ".join(skipped))
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
