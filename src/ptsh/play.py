"""`ptsh play SESSION_ID` and `ptsh recordings ls`: database sessions from the audit log.

A database session is a stream of audit events, not a byte recording. ``play`` prints
them as JSON/YAML, or translates them into a psql-like transcript. It reads every event of
the session, page by page (``common.audit_pages``), however long the session was.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from common.cli import FORMAT_OPTION, Format, render
from common.transcript import session_time as _when
from common.transcript import transcript

recordings_app = typer.Typer(help="View recorded sessions.", no_args_is_help=True)


def play(
    session_id: Annotated[str, typer.Argument(help="Session ID (see ptsh recordings ls).")],
    fmt: Annotated[
        Format, typer.Option("--format", "-f", help="text (a psql-like transcript), json or yaml.")
    ] = Format.text,
    proxy: Annotated[str | None, typer.Option("--proxy")] = None,
) -> None:
    """Play back a database session from the audit log."""
    from urllib.parse import quote

    from common.audit_pages import EventPages
    from ptsh.login_state import current_login

    login = current_login(proxy)
    with login.client() as client:
        events = list(EventPages(client, f"/v1/sessions/{quote(session_id, safe='')}/events", {}))
    render(events, fmt, transcript)


def _range(from_utc: str | None, to_utc: str | None, last: str | None) -> tuple[datetime, datetime]:
    from common.durations import parse_duration
    from common.errors import BadParameter, UsageError

    now = datetime.now(UTC)
    if last:
        if from_utc or to_utc:
            raise UsageError("use either --last or --from-utc/--to-utc")
        try:
            return now - parse_duration(last, what="--last"), now
        except BadParameter as exc:
            raise UsageError(exc.message) from None

    def day(text: str, flag: str) -> datetime:
        try:
            return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            raise UsageError(f"{flag} must be a date like 2026-11-24") from None

    start = day(from_utc, "--from-utc") if from_utc else now - timedelta(hours=24)
    end = day(to_utc, "--to-utc") + timedelta(days=1) if to_utc else now
    return start, end


@recordings_app.command("ls")
def recordings_ls(
    from_utc: Annotated[str | None, typer.Option("--from-utc", help="Start date, YYYY-MM-DD.")] = None,
    to_utc: Annotated[str | None, typer.Option("--to-utc", help="End date, YYYY-MM-DD.")] = None,
    last: Annotated[str | None, typer.Option("--last", help="Duration back from now, e.g. 5h30m.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many sessions.")] = 50,
    fmt: Format = FORMAT_OPTION,
    proxy: Annotated[str | None, typer.Option("--proxy")] = None,
) -> None:
    """List recorded database sessions (default: the last 24 hours)."""
    from common.audit_pages import EventPages
    from common.cli import eprint, safe_text, table
    from common.errors import UsageError
    from ptsh.login_state import current_login

    if limit < 1:
        raise UsageError(f"--limit must be at least 1 (got {limit})")
    start, end = _range(from_utc, to_utc, last)
    login = current_login(proxy)
    with login.client() as client:
        params = {"type": "db.session.end", "from": start.isoformat(), "to": end.isoformat(), "order": "desc"}
        found = EventPages(client, "/v1/events", params, limit)
        events = list(found)
    if found.cut:
        eprint(f"NOTE: showed the {limit} most recent sessions; there are more: raise --limit or narrow the time range")
    if fmt != Format.text:
        render(events, fmt)
        return
    rows = [
        [
            safe_text(e.get("sid", "")),
            safe_text(e.get("db_protocol", "")),
            safe_text(e.get("user", "")),
            safe_text(e.get("db_service", "")),
            _when(e),
        ]
        for e in events
    ]
    print(table(["ID", "Type", "Participants", "Target", "Timestamp"], rows))


def register(app: typer.Typer) -> None:
    app.command("play")(play)
    app.add_typer(recordings_app, name="recordings")
