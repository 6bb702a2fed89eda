"""Access requests as text, for ``ptsh request`` and ``pctl requests`` (JSON/YAML print the document)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from common.cli import safe_text, table

LOGIN_HINT = "use 'ptsh login --request-id=<request-id>' to log in with an approved request"


def _when(text: str | None) -> datetime | None:
    if not text:
        return None
    when = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _left(text: str | None, now: datetime) -> str:
    from common.durations import format_duration

    when = _when(text)
    if when is None:
        return ""
    left = when - now
    if left.total_seconds() <= 0:
        return "expired"
    return format_duration(left) if left.total_seconds() >= 60 else "<1m"


def status_of(doc: dict[str, Any], now: datetime | None = None) -> str:
    """The state, or ``EXPIRED`` for a request that can no longer be reviewed or assumed."""
    spec = doc.get("spec", {})
    now = now or datetime.now(UTC)
    state = str(spec.get("state", ""))
    limit = _when(spec.get("expires")) if state == "PENDING" else _when(spec.get("access_expiry"))
    if spec.get("expired") or (state != "DENIED" and limit is not None and limit <= now):
        return "EXPIRED"
    return state


def requests_table(docs: list[dict[str, Any]], now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    if not docs:
        return "No access requests found."
    rows = []
    for d in docs:
        spec = d.get("spec", {})
        created = _when(spec.get("created"))
        rows.append(
            [
                d["metadata"]["name"],
                spec.get("user", ""),
                ",".join(spec.get("roles") or []),
                f"{created:%d %b %y %H:%M} UTC" if created else "",
                _left(spec.get("expires"), now) if spec.get("state") == "PENDING" else "",
                _left(spec.get("access_expiry"), now),
                status_of(d, now),
            ]
        )
    headers = ["ID", "User", "Roles", "Created At (UTC)", "Request TTL", "Session TTL", "Status"]
    return table(headers, [[safe_text(c) for c in row] for row in rows])


def request_text(doc: dict[str, Any], now: datetime | None = None) -> str:
    """The request's details block, then its approvals and denials."""
    spec = doc.get("spec", {})
    reason = f'"{spec["request_reason"]}"' if spec.get("request_reason") else "[none]"
    reviewers = ", ".join(spec.get("suggested_reviewers") or []) or "[none]"
    expiry = _when(spec.get("access_expiry"))
    rows = [
        ("Request ID:", doc["metadata"]["name"]),
        ("Username:", spec.get("user", "")),
        ("Roles:", ", ".join(spec.get("roles") or [])),
        ("Reason:", reason),
        ("Reviewers:", f"{reviewers} (suggested)"),
        ("Access Expires:", f"{expiry:%Y-%m-%d %H:%M:%S} UTC" if expiry else ""),
        ("Status:", status_of(doc, now)),
    ]
    if spec.get("resolve_reason"):
        rows.append(("Resolve Reason:", f'"{spec["resolve_reason"]}"'))
    width = max(len(label) for label, _ in rows) + 1
    lines = [f"{label.ljust(width)}{safe_text(value)}" for label, value in rows]
    for title, state in (("Approvals", "APPROVED"), ("Denials", "DENIED")):
        reviews = [r for r in spec.get("reviews") or [] if r.get("proposed_state") == state]
        if not reviews:
            continue
        lines.append(f"{title}:")
        for r in reviews:
            why = f'"{r["reason"]}"' if r.get("reason") else "[none]"
            lines.append(f"  Reviewer: {safe_text(r.get('author', ''))}  Reason: {safe_text(why)}")
    return "\n".join(lines)
