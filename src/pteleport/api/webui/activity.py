"""Management → Activity: the audit log as a filterable, paged table, and one session's queries.

Both read through ``AuditService`` (``search`` and ``session_events``), the code behind
``pctl audit events`` and ``ptsh play``, so the web shows a user exactly the events the
CLIs would. The log itself filters by event type, user and time; the database and
success filters are applied here while walking the log's pages, newest first: a page asks
the log for only as many events as it still needs, so the cursor of the next page is the
log's own and nothing is skipped or shown twice. A page that finds fewer than ``PAGE_SIZE``
matches within ``SCAN_LIMIT`` events says so and offers to go on.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from common.errors import BadParameter
from common.transcript import session_time, transcript
from pteleport.api.webui.handler import WebCall
from pteleport.api.webui.render import Html
from pteleport.audit.records import Page

PAGE_SIZE = 50
SCAN_LIMIT = 5_000
SESSION_EVENT_LIMIT = 20_000
KNOWN_TYPES = [
    "db.session.start",
    "db.session.end",
    "db.session.query",
    "db.session.query.failed",
    "db.session.postgres.statements.parse",
    "db.session.postgres.statements.bind",
    "db.session.postgres.statements.execute",
    "user.login",
    "user.create",
    "user.update",
    "user.delete",
    "user.password_change",
    "reset_password_token.create",
    "role.created",
    "role.updated",
    "role.deleted",
    "cert.create",
    "join_token.create",
    "instance.join",
    "bot.join",
    "db_server.create",
    "lock.created",
    "lock.deleted",
    "db.create",
    "db.update",
    "db.delete",
]


def _when(text: str, name: str) -> datetime | None:
    """A time from the filter form (``YYYY-MM-DDTHH:MM``, read as UTC) or an RFC 3339 time."""
    text = text.strip()
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadParameter(f"{name} must be a time like 2026-11-24T13:00 (UTC)") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _success(event: dict[str, Any]) -> bool:
    return event.get("success") is not False


def _row(event: dict[str, Any]) -> dict[str, Any]:
    return {
        "event": event,
        "time": str(event.get("time", "")),
        "type": str(event.get("event", "")),
        "code": str(event.get("code", "")),
        "user": str(event.get("user", "") or ""),
        "database": str(event.get("db_service", "") or ""),
        "sid": str(event.get("sid", "") or ""),
        "success": _success(event),
        "summary": _summary(event),
    }


def _summary(event: dict[str, Any]) -> str:
    """One line of what happened, for the table (the whole event is in its JSON)."""
    identity = event.get("identity") if isinstance(event.get("identity"), dict) else {}
    for value in (
        event.get("db_query"),
        event.get("query"),
        event.get("error"),
        event.get("name"),
        f"{event.get('cert_type', '')} certificate for {identity['user']}" if identity.get("user") else "",
    ):
        if value:
            text = " ".join(str(value).split())
            return text if len(text) <= 120 else text[:117] + "..."
    return ""


def walk(
    search: Callable[[int, str | None], Page],
    keep: Callable[[dict[str, Any]], bool],
    cursor: str | None,
    size: int = PAGE_SIZE,
    scan_limit: int = SCAN_LIMIT,
) -> tuple[list[dict[str, Any]], str | None, int]:
    """Up to ``size`` events that ``keep`` keeps, from ``search(limit, cursor)`` pages; with
    the cursor to go on from (None: no more) and how many events were read.

    Each search asks for only as many events as are still missing, so the cursor returned is
    exactly after the last event read: the next page starts where this one stopped.
    """
    found: list[dict[str, Any]] = []
    scanned = 0
    while True:
        page = search(size - len(found), cursor)
        scanned += len(page.events)
        found.extend(e for e in page.events if keep(e))
        cursor = page.next
        if cursor is None or len(found) >= size or scanned >= scan_limit:
            return found, cursor, scanned


def activity(call: WebCall) -> Html:
    q = call.query
    filters = {
        "type": q.get("type", "").strip(),
        "user": q.get("user", "").strip(),
        "database": q.get("database", "").strip(),
        "success": q.get("success", "").strip(),
        "from": q.get("from", "").strip(),
        "to": q.get("to", "").strip(),
    }
    if filters["success"] not in ("", "yes", "no"):
        raise BadParameter("success must be yes, no or empty")
    from_time, to_time = _when(filters["from"], "from"), _when(filters["to"], "to")

    def search(limit: int, cursor: str | None) -> Page:
        return call.auth.audit.search(
            call.me(),
            from_time=from_time,
            to_time=to_time,
            event_types=[filters["type"]] if filters["type"] else None,
            user=filters["user"] or None,
            limit=limit,
            order="desc",
            cursor=cursor,
        )

    def keep(event: dict[str, Any]) -> bool:
        if filters["database"] and event.get("db_service") != filters["database"]:
            return False
        return not filters["success"] or _success(event) == (filters["success"] == "yes")

    events, cursor, scanned = walk(search, keep, q.get("cursor") or None)
    rows = [_row(e) for e in events]
    kept = {k: v for k, v in filters.items() if v}
    older = "/web/activity?" + urlencode({**kept, "cursor": cursor}) if cursor else ""
    return call.page(
        "activity.html",
        rows=rows,
        filters=filters,
        known_types=KNOWN_TYPES,
        older=older,
        newest="/web/activity?" + urlencode(kept) if q.get("cursor") else "",
        cut=cursor is not None and len(rows) < PAGE_SIZE,
        scanned=scanned,
    )


def session(call: WebCall) -> Html:
    """One database session, oldest event first, as ``ptsh play`` shows it."""
    sid = call.match["sid"]
    events: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = call.auth.audit.session_events(call.me(), sid, cursor)
        events.extend(page.events)
        cursor = page.next
        if cursor is None or len(events) >= SESSION_EVENT_LIMIT:
            break
    start = next((e for e in events if e.get("event") == "db.session.start"), events[0] if events else {})
    end = next((e for e in events if e.get("event") == "db.session.end"), None)
    return call.page(
        "session.html",
        sid=sid,
        start=start,
        started=session_time(start) if start else "",
        ended=session_time(end) if end else "",
        transcript=transcript(events),
        rows=[_row(e) for e in events],
        cut=cursor is not None,
    )
