"""A database session's audit events as a psql-like transcript (``ptsh play``, the web UI's session page).

The events come oldest first; statements prepared with Parse and bound with Bind are shown
when they are executed, with their parameters. Text from the events has its control
characters escaped (``common.cli.safe_text``), so a transcript is safe on a terminal.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def session_time(event: dict[str, Any]) -> str:
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
                    f'Session started to database "{safe_text(event.get("db_service", ""))}" at {session_time(event)} ({who})'
                )
                lines.append("")
            else:
                lines.append(
                    f'Session to database "{safe_text(event.get("db_service", ""))}" was refused at '
                    f"{session_time(event)} ({who}): {safe_text(event.get('error', ''))}"
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
            lines.append(f"Session ended at {session_time(event)}")
    return "\n".join(lines)


def _sql(text: Any) -> str:
    from common.cli import safe_text

    sql = str(text).strip()
    if sql and not sql.endswith(";"):
        sql += ";"
    return "\n   ".join(safe_text(part) for part in sql.splitlines())
