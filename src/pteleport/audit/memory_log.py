"""In-memory audit log for tests; keeps JSON copies so it behaves like the stored logs."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

from common.errors import BadParameter, NotFound

from .records import Order, Page, StoredEvent, check_aware, make_page, make_query, to_micros, to_stored


class MemoryAuditLog:
    """An AuditLog in a list, in arrival order; thread-safe."""

    def __init__(self) -> None:
        self._events: list[StoredEvent] = []
        self._position: dict[str, int] = {}  # uid -> arrival number
        self._next = 0
        self._lock = threading.Lock()

    def emit(self, event: dict[str, Any]) -> None:
        self.emit_batch([event])

    def emit_batch(self, events: list[dict[str, Any]]) -> None:
        if not isinstance(events, list):
            raise BadParameter("emit_batch takes a list of events")
        stored = [to_stored(e) for e in events]
        with self._lock:
            for record in stored:
                if record.uid in self._position:
                    continue
                self._position[record.uid] = self._next
                self._next += 1
                self._events.append(record)

    def search(self, **query: Any) -> list[dict[str, Any]]:
        return self.search_page(**query).events

    def search_page(
        self,
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
    ) -> Page:
        query = make_query(
            from_time=from_time,
            to_time=to_time,
            event_types=event_types,
            user=user,
            sid=sid,
            limit=limit,
            order=order,
            after_id=after_id,
            cursor=cursor,
        )
        desc = query.order == "desc"
        with self._lock:
            rows = [(self._position[e.uid], to_micros(e.time), e) for e in self._events if query.matches(e)]
            position = query.cursor
            if position is None and query.after_id is not None:
                if query.after_id not in self._position:
                    raise NotFound(f"audit event {query.after_id} not found; it may have been pruned")
                start = self._position[query.after_id]
                rows = [r for r in rows if r[0] > start]
            elif position is not None and position.time_us is None:
                rows = [r for r in rows if r[0] > position.id]
            elif position is not None:
                mark = (position.time_us, position.id)
                rows = [r for r in rows if ((r[1], r[0]) < mark if desc else (r[1], r[0]) > mark)]
            if query.arrival_order:
                rows.sort(key=lambda r: r[0])
            else:
                rows.sort(key=lambda r: (r[1], r[0]), reverse=desc)
            picked = [(n, t, e.data) for n, t, e in rows[: query.limit + 1]]
        return make_page(picked, query)

    def prune(self, before: datetime) -> int:
        check_aware("before", before)
        with self._lock:
            keep = [e for e in self._events if e.time >= before]
            gone = len(self._events) - len(keep)
            for e in self._events:
                if e.time < before:
                    del self._position[e.uid]
            self._events = keep
            return gone

    def close(self) -> None:
        """Nothing to release."""
