"""Text tables and printable text for the CLIs, with the standard library only (no Typer),
so that fast paths (``ptsh.entry``) can print what the Typer commands print."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A borderless, left-aligned table like Teleport's (header, dashes, rows)."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: list[str]) -> str:
        return " ".join(c.ljust(widths[i]) for i, c in enumerate(cells)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def safe_text(value: Any) -> str:
    """Printable form of anything that came from outside: control characters escaped."""
    text = str(value)
    if text.isprintable():  # the common case, and the same answer: nothing to escape
        return text
    return "".join(ch if ch.isprintable() or ch in " " else repr(ch)[1:-1] for ch in text)
