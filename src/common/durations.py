"""The one duration parser (Go's ``time.ParseDuration`` plus "d" for days) and two printers.

Every duration pteleport reads goes through ``parse_duration``: config fields
(``lockout_duration``, ``retention``), role options (``max_session_ttl``) and the CLIs'
``--ttl``/``--last`` flags. It accepts what Go accepts ("90s", "1h30m", "30h0m0s",
"1.5h", "500ms", "0") plus days ("7d"), and refuses negative values and bare numbers:
"30" could mean seconds, minutes or (in Go YAML) nanoseconds, so it says "add a unit,
e.g. 30m". The one exception is ``ptsh login --ttl``, which takes a bare number as
minutes because ``tsh login --ttl`` does (``bare_minutes=True``).
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
_BARE = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_HINT = "use forms like 30m, 12h, 1h30m, 30h0m0s or 7d"
_MAX = timedelta(days=365 * 200)


def parse_duration(text: object, *, what: str = "", bare_minutes: bool = False) -> timedelta:
    """Parse a Go duration ("90s", "1h30m", "2h45m10s", "30h0m0s", "1.5h") or days ("7d").

    A leading "+" is allowed; "0" is zero. Negative values are refused, and so are bare
    numbers unless ``bare_minutes`` (then "90" is 90 minutes). ``what`` names the field or
    flag in the error, e.g. ``--ttl``.
    """
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise BadParameter(f"{what or 'a duration'} must be a duration string; {_HINT}")
    shown = f'{what} "{text}"' if what else f'"{text}"'
    raw = str(text).strip()
    body = raw[1:] if raw.startswith("+") else raw
    if raw.startswith("-"):
        raise BadParameter(f"{shown} is negative; a duration must be zero or more ({_HINT})")
    if _BARE.fullmatch(body):
        if float(body) == 0:
            return timedelta()
        if bare_minutes and body.isdigit():
            return _bounded(timedelta(minutes=int(body)), shown)
        raise BadParameter(f"{shown} has no unit; add a unit, e.g. {body}m or {body}s")
    pos = 0
    total = timedelta()
    for match in _PART.finditer(body):
        if match.start() != pos:
            break
        try:
            total += float(match.group(1)) * _UNITS[match.group(2)]
        except OverflowError:
            raise BadParameter(f"{shown} is too long") from None
        pos = match.end()
    if not body or pos != len(body):
        raise BadParameter(f"{shown} is not a duration; {_HINT}")
    return _bounded(total, shown)


def _bounded(delta: timedelta, shown: str) -> timedelta:
    if delta > _MAX:
        raise BadParameter(f"{shown} is too long; the most is 200 years")
    return delta


def format_duration(delta: timedelta) -> str:
    """Short human form: "11h59m", "45m", "30s" ("0s" for zero or less)."""
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        return "0s"
    days, rem = divmod(seconds, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    hours += days * 24
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m"
    return f"{secs}s"


def format_go_duration(delta: timedelta) -> str:
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
