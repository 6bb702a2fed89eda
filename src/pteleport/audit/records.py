"""What every audit log shares: the indexed form of an event and a checked search query."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from common.errors import BadParameter

from .events import parse_time

Order = Literal["asc", "desc"]


@dataclass(frozen=True)
class StoredEvent:
    """An event as logs keep it: the columns searched on, and the whole event as JSON."""

    uid: str
    time: datetime
    event: str
    sid: str | None
    user: str | None
    data: str

    def load(self) -> dict[str, Any]:
        return json.loads(self.data)


def to_stored(event: dict[str, Any]) -> StoredEvent:
    """Check an event handed to ``emit`` and index it; BadParameter if it is not one."""
    if not isinstance(event, dict):
        raise BadParameter("an audit event must be a JSON object")
    for name in ("event", "uid", "time"):
        if not isinstance(event.get(name), str) or not event[name]:
            raise BadParameter(f"an audit event needs a non-empty string {name!r}")
    try:
        data = json.dumps(event, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise BadParameter(f"audit event {event['uid']} cannot be stored as JSON", str(err)) from err
    return StoredEvent(
        uid=event["uid"],
        time=parse_time(event["time"]),
        event=event["event"],
        sid=_text(event.get("sid")),
        user=_text(event.get("user")),
        data=data,
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True)
class Query:
    """A checked search. Times: ``from_time <= time < to_time``.

    Without ``after_id`` results are ordered by event time (then by arrival).
    With ``after_id`` (the uid of an event the caller already has, for ``--follow``)
    they are the events stored after that one, in the order they were stored; events
    that arrive late from an agent's buffer are then not missed. That needs ``asc``.
    """

    from_time: datetime | None = None
    to_time: datetime | None = None
    event_types: tuple[str, ...] | None = None
    user: str | None = None
    sid: str | None = None
    limit: int = 500
    order: Order = "asc"
    after_id: str | None = None

    def matches(self, stored: StoredEvent) -> bool:
        """Whether an event passes the filters (everything except ``after_id``)."""
        return (
            (self.from_time is None or stored.time >= self.from_time)
            and (self.to_time is None or stored.time < self.to_time)
            and (self.event_types is None or stored.event in self.event_types)
            and (self.user is None or stored.user == self.user)
            and (self.sid is None or stored.sid == self.sid)
        )


def check_aware(name: str, when: datetime) -> datetime:
    """``when`` if it is a timezone-aware datetime; BadParameter naming ``name`` if not."""
    if not isinstance(when, datetime) or when.utcoffset() is None:
        raise BadParameter(f"{name} must be a timezone-aware datetime")
    return when


def make_query(
    *,
    from_time: datetime | None = None,
    to_time: datetime | None = None,
    event_types: list[str] | None = None,
    user: str | None = None,
    sid: str | None = None,
    limit: int = 500,
    order: Order = "asc",
    after_id: str | None = None,
) -> Query:
    """Check search arguments once, the same way for every log."""
    for name, when in (("from_time", from_time), ("to_time", to_time)):
        if when is not None:
            check_aware(name, when)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise BadParameter("the search limit must be a positive integer")
    if order not in ("asc", "desc"):
        raise BadParameter("the search order must be 'asc' or 'desc'")
    if after_id is not None and order != "asc":
        raise BadParameter("following events (after_id) reads them oldest first; use order 'asc'")
    if isinstance(event_types, str):
        raise BadParameter("event_types must be a list of event names")
    return Query(
        from_time=from_time,
        to_time=to_time,
        event_types=None if event_types is None else tuple(event_types),
        user=user,
        sid=sid,
        limit=limit,
        order=order,
        after_id=after_id,
    )
