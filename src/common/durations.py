"""Durations as people type them ("30m", "12h", "1h30m", "90d") and as we print them ("11h59m")."""

from __future__ import annotations

import re
from datetime import timedelta

from common.errors import BadParameter

_UNITS = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str, *, what: str = "duration") -> timedelta:
    """Parse a Go-style duration ("8h", "1h30m", "30h0m0s", "90s") plus days ("90d").

    A bare number is taken as minutes, as ``tsh --ttl`` does.
    """
    raw = str(text).strip()
    if re.fullmatch(r"\d+", raw):
        return timedelta(minutes=int(raw))
    pos = 0
    total = timedelta()
    for match in _PART.finditer(raw):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not raw or pos != len(raw):
        raise BadParameter(f'{what} "{text}" is not a duration; use forms like 30m, 12h, 1h30m or 90d')
    return total


def format_duration(delta: timedelta) -> str:
    """Short human form: "11h59m", "45m", "30s", "<1m" for positive values under a minute."""
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
    """Teleport's printing of a validity such as "1h0m0s"."""
    seconds = int(delta.total_seconds())
    hours, rem = divmod(seconds, 3600)
    minutes, secs = divmod(rem, 60)
    return f"{hours}h{minutes}m{secs}s"
