"""Go-style durations as Teleport resources write them ("8h", "1h30m", "30h0m0s"), plus "d" for days.

Unlike ``common.durations`` (which reads what people type on a command line and takes a bare
number as minutes), this follows Go's ``time.ParseDuration`` strictly, so that role files
written for Teleport mean the same here: a bare number other than "0" is refused.
"""

from __future__ import annotations

import re
from datetime import timedelta

from common.errors import BadParameter

_UNITS: dict[str, timedelta] = {
    "ns": timedelta(microseconds=0.001),
    "us": timedelta(microseconds=1),
    "µs": timedelta(microseconds=1),  # U+00B5 micro sign
    "μs": timedelta(microseconds=1),  # U+03BC greek mu
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d)")
_HINT = "use forms like 30m, 12h, 1h30m, 30h0m0s or 7d"


def parse_duration(text: str) -> timedelta:
    """Parse a Go duration ("90s", "1h30m", "2h45m10s", "30h0m0s", "1.5h") or days ("7d").

    A leading "+" is allowed; negative durations and bare numbers (except "0") are refused.
    """
    if not isinstance(text, str):
        raise BadParameter(f"{text!r} is not a duration; {_HINT}")
    raw = text.strip()
    body = raw[1:] if raw.startswith("+") else raw
    if raw.startswith("-"):
        raise BadParameter(f'"{text}" is negative; a duration must be zero or more ({_HINT})')
    if body == "0":
        return timedelta()
    pos = 0
    total = timedelta()
    for match in _PART.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not body or pos != len(body):
        raise BadParameter(f'"{text}" is not a duration; {_HINT}')
    return total


def format_duration(delta: timedelta) -> str:
    """Go's printing of a duration: "30h0m0s", "1h30m0s", "1m30s", "45s", "1.5s", "500ms", "0s"."""
    micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    if micros == 0:
        return "0s"
    if micros < 1_000_000:
        if micros % 1000 == 0:
            return f"{sign}{micros // 1000}ms"
        if micros >= 1000:
            return f"{sign}{_trim(micros / 1000)}ms"
        return f"{sign}{micros}µs"
    hours, rem = divmod(micros, 3_600_000_000)
    minutes, rem = divmod(rem, 60_000_000)
    seconds = _trim(rem / 1_000_000)
    if hours:
        return f"{sign}{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{sign}{minutes}m{seconds}s"
    return f"{sign}{seconds}s"


def _trim(value: float) -> str:
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text or "0"
