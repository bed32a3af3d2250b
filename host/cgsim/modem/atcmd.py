"""What every emulated dialect shares about the AT command line itself: +CME error codes, the
error a handler raises, the answer that asks for a payload after a prompt, argument splitting."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# +CME ERROR codes (3GPP TS 27.007 9.2.1)
CME_NOT_ALLOWED = 3
CME_NOT_SUPPORTED = 4
CME_SIM_NOT_INSERTED = 10
CME_SIM_PIN_REQUIRED = 11
CME_SIM_PUK_REQUIRED = 12
CME_INCORRECT_PASSWORD = 16
CME_NO_NETWORK = 30
CME_PDP_AUTH_FAILURE = 149


class AtError(Exception):
    """A handler's error: +CME ERROR: code (or ERROR when +CMEE is 0 or code is None)."""

    def __init__(self, code: int | None):
        super().__init__(code)
        self.code = code

    def final(self, cmee: int) -> str:
        if self.code is None or cmee == 0:
            return "ERROR"
        return f"+CME ERROR: {self.code}"


@dataclass
class Prompt:
    """A handler's answer that asks for a raw payload of `size` bytes after the dialect's prompt;
    then(payload) gives the reply lines and the final result."""

    size: int
    then: Callable[[bytes], tuple[list[str], str]]


def split_args(text: str) -> list[str]:
    """Comma-separated AT arguments, quotes removed (quoted commas kept)."""
    out, cur, quoted = [], "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [a.strip() for a in out]


def parse(line: str) -> tuple[str, str, list[str]] | None:
    """'AT+CPIN="1234"' -> ("+CPIN", "=", ["1234"]); sep is "", "=", "?" or "=?". None: not AT."""
    if not line.upper().startswith("AT"):
        return None
    body = line[2:]
    name, sep, rest = body, "", ""
    for i, ch in enumerate(body):
        if ch in "=?":
            name, sep, rest = body[:i], ch, body[i + 1 :]
            if ch == "=" and rest == "?":
                sep, rest = "=?", ""
            break
    return name.upper(), sep, split_args(rest) if sep == "=" else []
