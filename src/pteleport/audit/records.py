"""What every audit log shares: the indexed form of an event, a checked search query, and
the page/cursor of a search that goes on.

Order: without ``after_id``, events come by ``time`` and, for equal times, by arrival at
the log (its ``id``), oldest first or (``desc``) newest first. With ``after_id`` they come
in arrival order. A page holds at most ``limit`` events; when more match, ``next`` is an
opaque cursor, and the same search with ``cursor=next`` returns the events right after
the last one of the page (keyset paging on ``(time, id)`` or ``id``: no event is repeated
or skipped, whatever is written meanwhile, except an event stored later with a time
before the cursor, which only a new search or ``--follow`` sees).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson

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


MAX_LINES = 10_000
"""Most events one batch (``split_lines``) may hold."""


def split_lines(body: bytes) -> list[str]:
    """The events of an NDJSON body (one JSON object per line; blank lines ignored), not yet checked."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadParameter("the audit events are not UTF-8 text; send one JSON object per line") from None
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) > MAX_LINES:
        raise BadParameter(f"a batch holds at most {MAX_LINES} audit events; send smaller batches")
    return lines


def _from_line(line: str) -> tuple[dict[str, Any], str]:
    """An event sent as one JSON line: (event, the line as stored). One parse, no re-encoding."""
    try:
        event = orjson.loads(line)  # strict JSON: no NaN or Infinity, no lone surrogates (the line is stored as sent)
    except orjson.JSONDecodeError as err:
        raise BadParameter("an audit event line is not one JSON object", str(err)) from None
    if not isinstance(event, dict):
        raise BadParameter("an audit event must be a JSON object")
    return event, line.strip()


def to_stored(event: dict[str, Any] | str) -> StoredEvent:
    """Check an event handed to ``emit`` and index it; BadParameter if it is not one.

    An event may come as a dict, or as one JSON line (an agent's batch, ``split_lines``):
    a line that parses as one JSON object is stored as it was sent.
    """
    data: str | None = None
    if isinstance(event, str):
        event, data = _from_line(event)
    if not isinstance(event, dict):
        raise BadParameter("an audit event must be a JSON object")
    for name in ("event", "uid", "time"):
        if not isinstance(event.get(name), str) or not event[name]:
            raise BadParameter(f"an audit event needs a non-empty string {name!r}")
    if data is None:
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
    cursor: Cursor | None = None

    @property
    def arrival_order(self) -> bool:
        """Events in the order they were stored (``--follow``), not by time."""
        return self.after_id is not None or (self.cursor is not None and self.cursor.time_us is None)

    def matches(self, stored: StoredEvent) -> bool:
        """Whether an event passes the filters (everything except ``after_id``)."""
        return (
            (self.from_time is None or stored.time >= self.from_time)
            and (self.to_time is None or stored.time < self.to_time)
            and (self.event_types is None or stored.event in self.event_types)
            and (self.user is None or stored.user == self.user)
            and (self.sid is None or stored.sid == self.sid)
        )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
_CURSOR = re.compile(r"t(-?\d{1,20})\.(\d{1,20})|a(\d{1,20})")


def to_micros(when: datetime) -> int:
    """Microseconds since the Unix epoch (how cursors and the SQLite log keep times)."""
    return (when - _EPOCH) // _MICRO


def from_micros(micros: int) -> datetime:
    return _EPOCH + micros * _MICRO


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: ``(time, id)`` of its last event in time order, or its ``id`` in arrival order."""

    id: int
    time_us: int | None = None  # None: arrival order

    def encode(self) -> str:
        return f"a{self.id}" if self.time_us is None else f"t{self.time_us}.{self.id}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        match = _CURSOR.fullmatch(text or "")
        if match is None:
            raise BadParameter("the search cursor is not one this server handed out; start the search again")
        if match.group(3) is not None:
            return cls(int(match.group(3)))
        return cls(int(match.group(2)), int(match.group(1)))


@dataclass(frozen=True)
class Page:
    """One page of a search: the events, and the cursor of the next page (None: this was the last)."""

    events: list[dict[str, Any]]
    next: str | None = None


def make_page(rows: list[tuple[int, int, str]], query: Query) -> Page:
    """A page from up to ``limit + 1`` rows of ``(id, time_us, data)`` read in the query's order."""
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    nxt = None
    if more and rows:
        last_id, last_time, _ = rows[-1]
        nxt = Cursor(last_id, None if query.arrival_order else last_time).encode()
    return Page([_load(data) for _, _, data in rows], nxt)


_LONG_DIGITS = re.compile(r"[0-9]{19}")


def _load(data: str) -> dict[str, Any]:
    """A stored event, read with orjson; with ``json`` where orjson would change or refuse it.

    orjson reads an integer past 64 bits as a float (it would come back rounded) and
    refuses an escaped lone surrogate (``json`` stored those before orjson was used).
    """
    if _LONG_DIGITS.search(data) is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


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
    cursor: str | None = None,
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
    position = Cursor.decode(cursor) if cursor is not None else None
    if position is not None and (after_id is not None) != (position.time_us is None):
        raise BadParameter("the search cursor belongs to another kind of search; start the search again")
    return Query(
        from_time=from_time,
        to_time=to_time,
        event_types=None if event_types is None else tuple(event_types),
        user=user,
        sid=sid,
        limit=limit,
        order=order,
        after_id=after_id,
        cursor=position,
    )
