"""Read a cellguard device's status over its serial console (pyserial), for a person or a script.

    cellguard status --port /dev/ttyACM0            the status page a technician reads
    cellguard status --port /dev/ttyACM0 --json     the same as JSON, for scripts
    cellguard status --port P --command log         any read-only console command
    cellguard status --port P --service open-repl   a service action (challenge-response)

Without --port it reads the virtual board that `make flash` started. Exit codes: 0 ok, 2 the port
cannot be opened, 3 the device does not answer, 4 the device refused (e.g. a service action),
6 the unit is in lockdown (its firmware cannot run; the boot part holds the port and says why).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

import serial

REPO = Path(__file__).resolve().parents[2]  # host/<package>/<module>.py
PROMPT = b"cellguard> "
REPL_PROMPT = b">>> "
RAW_REPL_PROMPT = b"raw REPL; CTRL-B to exit\r\n>"
BUSY = b"error: console busy:"  # lines the console dropped unanswered (firmware/lib/cellguard/console.py)
# Commands that change nothing on the unit: sent again when the console stays silent without echoing
# them (lost at the port: a board's RX buffer full of a flood's backlog drops bytes, and then no
# "console busy" line says so). A `service` line is never sent twice: each answer is one attempt.
READ_ONLY = ("help", "status", "version", "log")
RESEND_SILENT_S = 3.0  # silence after which a read-only line not yet echoed is sent again
DEFAULT_MASTER_KEY = REPO / "build" / "service" / "master.key"
VIRTUAL_PORT_FILE = REPO / "build" / "virtual-board" / "port"
SERVICE_CONTEXT = b"cellguard-service-v1"
DEVICE_KEY_LABEL = b"cellguard-service-device-key|"
SERVICE_ACTIONS = ("open-repl", "reprovision", "wipe")
# The boot part's lockdown answers every line with this (firmware/lib/cgboot/lockdown.py, REFUSAL).
LOCKDOWN_RE = re.compile(rb"lockdown \((.*)\): error: input ignored \(console locked\)\r?\n")
EXIT_LOCKDOWN = 6

log = logging.getLogger("status")


class StatusToolError(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


# ---- service keys (the host side of the console's challenge-response) --------------------------------
def load_master_key(path: Path, create: bool = False) -> bytes:
    """The service master secret: lives only on the host (a production line keeps it in an HSM)."""
    if not path.exists():
        if not create:
            raise StatusToolError(f"no service master key at {path} (the one `make flash` used)", 2)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
        log.info("created a new service master key at %s (keep it; it services every unit you flash)", path)
    return bytes.fromhex(path.read_text().strip())


def device_service_key(master: bytes, device_id: str) -> bytes:
    """The per-device key the device holds: compromising one unit reveals nothing about the others."""
    return hmac.new(master, DEVICE_KEY_LABEL + device_id.encode(), hashlib.sha256).digest()


def service_response(master: bytes, device_id: str, nonce_hex: str, action: str) -> str:
    msg = b"|".join((SERVICE_CONTEXT, device_id.encode(), nonce_hex.encode(), action.encode()))
    return hmac.new(device_service_key(master, device_id), msg, hashlib.sha256).hexdigest()


# ---- talking to the console --------------------------------------------------------------------------
class ConsoleClient:
    def __init__(self, port: str, baud: int = 115200, timeout: float = 5.0):
        self.timeout = timeout
        try:
            self.ser = serial.serial_for_url(port, baudrate=baud, timeout=0.1)
        except (serial.SerialException, OSError) as e:
            raise StatusToolError(f"cannot open {port}: {e} (wrong port? `ls /dev/tty*` lists them)", 2) from e
        self.port = port

    def close(self) -> None:
        self.ser.close()

    def __enter__(self) -> ConsoleClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read_until(self, markers: tuple[bytes, ...], timeout: float) -> bytes:
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = self.ser.read(self.ser.in_waiting or 1)
            if chunk:
                data += chunk
                if any(data.endswith(m) for m in markers):
                    return data
        return data

    def attach(self, reset_repl: bool = True) -> None:
        """Get to the console prompt; a development board sitting at the Python REPL is soft-reset."""
        self.ser.reset_input_buffer()
        self.ser.write(b"\r")
        deadline = time.monotonic() + self.timeout * (3 if reset_repl else 1)
        data = b""
        reset_sent = False
        nudged = False
        while time.monotonic() < deadline:
            # Silence is looked at in slices of a third of the default timeout however long the
            # caller waits overall: a raw REPL left by a tool is nudged just as soon.
            data = self._read_until((PROMPT, REPL_PROMPT), min(deadline - time.monotonic(), min(self.timeout, 5.0) / 3))
            self._check_lockdown(data)
            if not data and not nudged:
                # Silence: perhaps a raw REPL left by a tool; Ctrl-B leaves it (a console ignores it).
                self.ser.write(b"\x02")
                nudged = True
                continue
            if data.endswith(PROMPT):
                return
            if data.endswith(REPL_PROMPT) and reset_repl and not reset_sent:
                # A development unit at the Python REPL (after mpremote): a soft reset starts main.py.
                self.ser.write(b"\x04")
                reset_sent = True
        raise StatusToolError(
            f"the device on {self.port} does not answer with the cellguard console "
            f"(got {data[-60:]!r}); is it a flashed cellguard unit, powered, on this port and baud?", 3
        )

    @staticmethod
    def _check_lockdown(data: bytes) -> None:
        found = LOCKDOWN_RE.search(data)
        if found:
            reason = found.group(1).decode(errors="replace")
            raise StatusToolError(
                f"the unit is in lockdown: {reason}. Its firmware cannot run and the boot part holds the "
                "console (no REPL, no service actions); it retries every 5 minutes. Re-flash it "
                "(docs/field-guide.md, 'Lockdown').", EXIT_LOCKDOWN
            )

    def command(self, line: str, ends: tuple[bytes, ...] = (PROMPT,)) -> str:
        """Run one console command and return what it printed (without the echo and the prompt)."""
        self.ser.write(line.encode() + b"\r")
        echo = line.encode() + b"\r\n"
        data = b""
        deadline = time.monotonic() + self.timeout
        words = line.split()
        read_only = bool(words) and words[0] in READ_ONLY
        # Stale prompts may still be in flight: the answer is what follows our echo, up to a prompt.
        sent_at = 0  # where `data` stood when the line was last sent
        while time.monotonic() < deadline:
            left = deadline - time.monotonic()
            got = self._read_until(ends, min(left, RESEND_SILENT_S) if read_only else left)
            data += got
            if echo not in data and (BUSY in data[sent_at:] or (read_only and not got)):
                # The console dropped our line with others (a flood's backlog was still arriving) and
                # said so, or it is silent and never echoed it (lost at the port): send it again,
                # until the deadline.
                sent_at = len(data)
                self.ser.write(line.encode() + b"\r")
            at = data.find(echo)
            end = next((m for m in ends if data.endswith(m)), None)
            if at >= 0 and end is not None:
                body = data[at + len(echo) : -len(end)]
                return body.decode(errors="replace").replace("\r\n", "\n")
        raise StatusToolError(f"no answer to {line.split()[0]!r} within {self.timeout:.0f} s", 3)

    def status(self) -> dict:
        out = self.command("status --json")
        for row in out.splitlines():
            if row.startswith("{"):
                try:
                    return json.loads(row)
                except ValueError as e:  # cut or mixed with other output (a unit resetting into its trial image)
                    raise StatusToolError(f"the device's `status --json` line does not parse ({e}): {row[:200]!r}", 3) from e
        raise StatusToolError(f"the device answered `status --json` with no JSON: {out[:200]!r}", 3)

    def service(self, action: str, master: bytes) -> str:
        out = self.command("service challenge")
        words = out.split()
        if len(words) != 3 or words[0] != "challenge":
            raise StatusToolError(f"the device gave no challenge: {out.strip()!r}", 4)
        device_id, nonce = words[1], words[2]
        # open-repl and reprovision hand the port to the Python REPL: its prompt ends the answer (the
        # raw REPL's, when the console ran from boot.py after mpremote's soft reset).
        answer = self.command(f"service {action} {service_response(master, device_id, nonce, action)}",
                              ends=(PROMPT, REPL_PROMPT, RAW_REPL_PROMPT))
        if "refused" in answer or answer.startswith("error"):
            raise StatusToolError(answer.strip(), 4)
        return answer


def default_port(port_file: Path = VIRTUAL_PORT_FILE) -> tuple[str | None, str]:
    """The virtual board's pty if one runs and still holds it (never a stale file's reused pty number)."""
    from cgsim import vbrecord

    return vbrecord.running(port_file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", help="serial port (default: the virtual board `make flash` started)")
    parser.add_argument("--baud", type=int, default=115200)
    parser.add_argument("--json", action="store_true", help="print the status as JSON")
    parser.add_argument("--command", choices=("status", "version", "log", "help"), help="another read-only command")
    parser.add_argument("--service", choices=SERVICE_ACTIONS, help="an authenticated service action")
    parser.add_argument("--service-key", type=Path, default=DEFAULT_MASTER_KEY, help="service master key file")
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--virtual-dir", type=Path, help=argparse.SUPPRESS)  # tests: another board's record
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    port = args.port
    if not port:
        port, why_not = default_port(args.virtual_dir / "port" if args.virtual_dir else VIRTUAL_PORT_FILE)
        if not port:
            print(f"status: no --port given and {why_not} (start one with `make flash` or `make virtual-board`)",
                  file=sys.stderr)
            return 2
    try:
        with ConsoleClient(port, args.baud, args.timeout) as client:
            client.attach()
            if args.service:
                print(client.service(args.service, load_master_key(args.service_key)).strip())
            elif args.json:
                print(json.dumps(client.status(), indent=2, sort_keys=True))
            else:
                print(client.command(args.command or "status").rstrip())
    except StatusToolError as e:
        print(f"status: {e}", file=sys.stderr)
        return e.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
