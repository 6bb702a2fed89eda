"""`ptsh play SESSION_ID` and `ptsh recordings ls`: database sessions from the audit log.

A database session is a stream of audit events, not a byte recording. ``play`` prints
them as JSON/YAML, or translates them into a psql-like transcript. It reads every event of
the session, page by page (``common.audit_pages``), however long the session was.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from common.cli import FORMAT_OPTION, Format, render

recordings_app = typer.Typer(help="View recorded sessions.", no_args_is_help=True)


def _when(event: dict[str, Any]) -> str:
    try:
        stamp = datetime.fromisoformat(str(event.get("time", "")).replace("Z", "+00:00"))
    except ValueError:
        return str(event.get("time", ""))
    return stamp.astimezone(UTC).strftime("%a %b %d %H:%M:%S UTC %Y")


def transcript(events: list[dict[str, Any]]) -> str:
    """A psql-like rendering of one database session's events."""
    from common.cli import safe_text

    lines: list[str] = []
    statements: dict[str, str] = {}
    portals: dict[str, tuple[str, list[Any]]] = {}
    prompt = "=>"
    for event in events:
        kind = event.get("event", "")
        db_name = safe_text(event.get("db_name", ""))
        prompt = f"{db_name}=>"
        if kind == "db.session.start":
            who = f"user {safe_text(event.get('user', ''))}, db user {safe_text(event.get('db_user', ''))}"
            if event.get("success", True):
                lines.append(
                    f'Session started to database "{safe_text(event.get("db_service", ""))}" at {_when(event)} ({who})'
                )
                lines.append("")
            else:
                lines.append(
                    f'Session to database "{safe_text(event.get("db_service", ""))}" was refused at '
                    f"{_when(event)} ({who}): {safe_text(event.get('error', ''))}"
                )
        elif kind == "db.session.query":
            lines.append(f"{prompt} {_sql(event.get('db_query', ''))}")
        elif kind == "db.session.postgres.statements.parse":
            statements[str(event.get("statement_name", ""))] = str(event.get("query", ""))
        elif kind == "db.session.postgres.statements.bind":
            query = statements.get(str(event.get("statement_name", "")), "")
            portals[str(event.get("portal_name", ""))] = (query, list(event.get("parameters") or []))
        elif kind == "db.session.postgres.statements.execute":
            query, params = portals.get(str(event.get("portal_name", "")), ("", []))
            shown = f"{prompt} {_sql(query)}"
            if params:
                shown += "  -- " + ", ".join(f"${i} = {safe_text(repr(p))}" for i, p in enumerate(params, 1))
            lines.append(shown)
        elif kind == "db.session.postgres.function":
            lines.append(f"{prompt} -- function call oid {safe_text(event.get('function_oid', ''))}")
        elif kind == "db.session.end":
            lines.append("")
            lines.append(f"Session ended at {_when(event)}")
    return "\n".join(lines)


def _sql(text: Any) -> str:
    from common.cli import safe_text

    sql = str(text).strip()
    if sql and not sql.endswith(";"):
        sql += ";"
    return "\n   ".join(safe_text(part) for part in sql.splitlines())


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
