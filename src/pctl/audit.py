"""`pctl audit events`: search the whole audit log; `--follow` streams new events (for a SIEM)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

audit_app = typer.Typer(help="Search and export the audit log.", no_args_is_help=True)


def _time(text: str | None, flag: str) -> str | None:
    if not text:
        return None
    from common.errors import UsageError

    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{flag} must be a date or time like 2026-11-24 or 2026-11-24T13:00:00Z") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).isoformat()


def _row(event: dict[str, Any]) -> list[str]:
    from common.cli import safe_text

    detail = event.get("db_query") or event.get("query") or event.get("error") or event.get("name") or ""
    return [
        safe_text(event.get("time", "")),
        safe_text(event.get("event", "")),
        safe_text(event.get("code", "")),
        safe_text(event.get("user", "")),
        safe_text(event.get("sid", "")),
        safe_text(detail)[:120],
    ]


@audit_app.command("events")
def events(
    event_type: Annotated[list[str] | None, typer.Option("--type", help="Event name, e.g. db.session.query.")] = None,
    user: Annotated[str | None, typer.Option("--user", help="Only this user's events.")] = None,
    sid: Annotated[str | None, typer.Option("--sid", help="Only this session's events.")] = None,
    from_time: Annotated[str | None, typer.Option("--from", help="Start (date or RFC 3339 time).")] = None,
    to_time: Annotated[str | None, typer.Option("--to", help="End (date or RFC 3339 time).")] = None,
    last: Annotated[str | None, typer.Option("--last", help="Duration back from now, e.g. 1h.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many events.")] = 500,
    fmt: Annotated[str, typer.Option("--format", "-f", help="text, json or jsonl.")] = "text",
    follow: Annotated[bool, typer.Option("--follow", help="Keep printing new events as they arrive.")] = False,
) -> None:
    """Search the audit log."""
    import json
    import sys

    from common.cli import table
    from common.errors import BadParameter, UsageError
    from pctl.connect import client as cluster_client

    if fmt not in ("text", "json", "jsonl"):
        raise UsageError(f'--format must be text, json or jsonl (got "{fmt}")')
    params: dict[str, Any] = {"limit": str(limit)}
    if last:
        from common.durations import parse_duration

        try:
            params["from"] = (datetime.now(UTC) - parse_duration(last, what="--last")).isoformat()
        except BadParameter as exc:
            raise UsageError(exc.message) from None
    elif from_time:
        params["from"] = _time(from_time, "--from")
    if to_time:
        params["to"] = _time(to_time, "--to")
    if event_type:
        params["type"] = event_type
    for key, value in (("user", user), ("sid", sid)):
        if value:
            params[key] = value
    with cluster_client() as client:
        found = client.get("/v1/events", params=params)
        if fmt == "json" and not follow:
            sys.stdout.write(json.dumps(found, indent=2) + "\n")
        elif fmt == "jsonl" or (fmt == "json" and follow):
            for event in found:
                sys.stdout.write(json.dumps(event) + "\n")
        else:
            print(table(["Time", "Event", "Code", "User", "Session", "Detail"], [_row(e) for e in found]))
        sys.stdout.flush()
        seen = {e.get("uid") for e in found}
        if follow and not found:
            params["from"] = datetime.now(UTC).isoformat()
        while follow:
            time.sleep(1.0)
            params.pop("to", None)
            if found:
                params["after"] = found[-1]["uid"]
                params.pop("from", None)
            batch = client.get("/v1/events", params=params)
            found = batch or found
            for event in batch:
                if event.get("uid") in seen:
                    continue
                seen.add(event.get("uid"))
                if fmt == "text":
                    print("  ".join(_row(event)), flush=True)
                else:
                    sys.stdout.write(json.dumps(event) + "\n")
                    sys.stdout.flush()
