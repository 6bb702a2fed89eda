"""`pctl audit events`: search the whole audit log; `--follow` streams new events (for a SIEM).

The search reads the server's pages (``common.audit_pages``) until ``--limit`` events were
printed or none are left. Events come oldest first, by time and then by arrival at auth.
If ``--limit`` stopped it while more matched, one line on stderr says so. JSON and JSONL
are written page by page, so a large export does not sit in memory.
"""

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
    limit: Annotated[int, typer.Option("--limit", help="At most this many events (oldest first).")] = 500,
    fmt: Annotated[str, typer.Option("--format", "-f", help="text, json or jsonl.")] = "text",
    follow: Annotated[bool, typer.Option("--follow", help="Keep printing new events as they arrive.")] = False,
) -> None:
    """Search the audit log."""
    import json
    import sys

    from common.audit_pages import EventPages
    from common.cli import eprint, table
    from common.errors import BadParameter, UsageError
    from pctl.connect import client as cluster_client

    if fmt not in ("text", "json", "jsonl"):
        raise UsageError(f'--format must be text, json or jsonl (got "{fmt}")')
    if limit < 1:
        raise UsageError(f"--limit must be at least 1 (got {limit})")
    params: dict[str, Any] = {}
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
    seen: set[str] = set()  # with --follow: what the search printed, not to print it twice

    def noted(events: Any) -> Any:
        for event in events:
            if follow:
                seen.add(event.get("uid"))
            yield event

    with cluster_client() as client:
        found = EventPages(client, "/v1/events", params, limit)
        if fmt == "json" and not follow:
            _write_json_array(found, sys.stdout)
        elif fmt == "jsonl" or (fmt == "json" and follow):
            for page in found.pages():
                sys.stdout.write("".join(json.dumps(event) + "\n" for event in noted(page)))
                sys.stdout.flush()
        else:
            print(table(["Time", "Event", "Code", "User", "Session", "Detail"], [_row(e) for e in noted(found)]))
        sys.stdout.flush()
        if found.cut:
            eprint(
                f"NOTE: showed the first {limit} matching events; more match: raise --limit or narrow the "
                "search (--from, --to, --type, --user, --sid)"
            )
        if follow:
            _follow(client, params, found.last, fmt, seen)


def _write_json_array(events: Any, out: Any) -> None:
    """What ``json.dumps(list, indent=2)`` prints, written one event at a time.

    orjson indents (``json`` with ``indent`` runs its pure-Python encoder: 10,000 events took
    over a second). Where the two would print differently, ``json`` encodes the event: text
    that is not printable ASCII (``json`` escapes it), any float (orjson spells some
    differently, and NaN as null), and what orjson cannot encode.
    """
    import json

    import orjson

    first = True
    for event in events:
        text = ""
        if not _has_float(event):
            try:
                text = orjson.dumps(event, option=orjson.OPT_INDENT_2).decode()
            except TypeError:
                pass
        if not text or not text.isascii() or "\x7f" in text:
            text = json.dumps(event, indent=2)
        out.write(("[\n  " if first else ",\n  ") + text.replace("\n", "\n  "))
        first = False
    out.write("[]\n" if first else "\n]\n")


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_float(v) for v in value)
    return False


def _follow(client: Any, params: dict[str, Any], last: dict[str, Any] | None, fmt: str, seen: set[str]) -> None:
    """Print events stored after the last one printed, as they arrive (arrival order)."""
    import json
    import sys

    params = dict(params)
    params.pop("to", None)
    if last is None:
        params["from"] = datetime.now(UTC).isoformat()
    while True:
        if last is not None:
            params["after"] = last["uid"]
            params.pop("from", None)
        answer = client.get("/v1/events", params={**params, "limit": "2000"})
        for event in answer.get("events", []):
            last = event
            if event.get("uid") in seen:
                continue
            seen.add(event.get("uid"))
            if fmt == "text":
                print("  ".join(_row(event)), flush=True)
            else:
                sys.stdout.write(json.dumps(event) + "\n")
                sys.stdout.flush()
        if len(seen) > 100_000:
            seen.clear()  # only a guard against a server sending one event twice in a row
        if not answer.get("next"):
            time.sleep(1.0)
