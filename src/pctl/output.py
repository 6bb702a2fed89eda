"""Output helpers shared by pctl's commands: the --format option, labels, times, durations."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import typer

from common.cli import safe_text, table
from common.errors import UsageError


class Fmt(StrEnum):
    text = "text"
    json = "json"
    yaml = "yaml"


FormatOpt = Annotated[Fmt, typer.Option("--format", help="Output format: text, json or yaml.")]
OptionalFormatOpt = Annotated[Fmt | None, typer.Option("--format", help="Output format: text, json or yaml.")]
DataFormatOpt = Annotated[Fmt, typer.Option("--format", help="Output format: yaml (default), json or text.")]


def labels_text(labels: dict[str, Any] | None, *, hide_internal: bool = True) -> str:
    items = sorted((labels or {}).items())
    if hide_internal:
        items = [(k, v) for k, v in items if not str(k).startswith("teleport.internal/")]
    return ",".join(f"{k}={v}" for k, v in items)


def parse_labels(text: str | None) -> dict[str, str]:
    """``env=prod,team=db`` -> a dict; refuses anything else with the offending part."""
    result: dict[str, str] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise UsageError(f'label "{part}" is not KEY=VALUE; write labels like env=prod,team=db')
        result[key.strip()] = value.strip()
    return result


def split_list(values: list[str] | str | None) -> list[str]:
    """``["a,b", "c"]`` or ``"a,b"`` -> ``["a", "b", "c"]`` (flags may repeat or use commas)."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        when = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def trim_go_duration(text: str) -> str:
    """Teleport's ``trimDurationZeroSuffix``: ``1h0m0s`` -> ``1h``, ``30m0s`` -> ``30m``."""
    if text.endswith("h0m0s"):
        return text[: -len("0m0s")]
    if text.endswith("m0s"):
        return text[: -len("0s")]
    return text


def expiry_text(expires: str | None, now: datetime | None = None) -> str:
    """``24 Nov 26 14:22 UTC (29m59s)`` (Go's RFC822 and the time left), or ``never``."""
    when = parse_time(expires)
    if when is None:
        return "never"
    now = now or datetime.now(UTC)
    left = max(int((when - now).total_seconds()), 0)
    hours, rem = divmod(left, 3600)
    minutes, seconds = divmod(rem, 60)
    if hours:
        left_text = f"{hours}h{minutes}m{seconds}s"
    elif minutes:
        left_text = f"{minutes}m{seconds}s"
    else:
        left_text = f"{seconds}s"
    return f"{when.astimezone(UTC):%d %b %y %H:%M} UTC ({left_text})"


def safe_table(headers: list[str], rows: list[list[Any]]) -> str:
    """``common.cli.table`` with every cell made printable (values come from the cluster)."""
    return table(headers, [[safe_text(cell) for cell in row] for row in rows])
