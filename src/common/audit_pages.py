"""Reading a paged audit search (``GET /v1/events``, ``/v1/sessions/SID/events``) to the end.

The server answers one page at a time (``{"events": [...], "next": CURSOR}``, at most a few
thousand events) and the cursor of the rest. ``EventPages`` follows the cursor until the
caller's ``limit`` is reached or nothing is left; ``cut`` then tells whether more events
matched than were read, so a CLI can say so instead of cutting silently.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

PAGE_SIZE = 2_000
"""Events asked for per request (the server may answer with fewer and a cursor)."""


class _Client(Protocol):
    def get(self, path: str, **kw: Any) -> Any: ...


class EventPages:
    """Iterate the events of a search across pages: ``for event in EventPages(...)``."""

    def __init__(self, client: _Client, path: str, params: dict[str, Any], limit: int | None = None) -> None:
        self.client = client
        self.path = path
        self.params = dict(params)
        self.limit = limit
        self.read = 0
        self.cut = False
        """True when ``limit`` stopped the reading while the server had more events."""
        self.last: dict[str, Any] | None = None

    def pages(self) -> Iterator[list[dict[str, Any]]]:
        cursor: str | None = None
        while self.limit is None or self.read < self.limit:
            want = PAGE_SIZE if self.limit is None else min(PAGE_SIZE, self.limit - self.read)
            params = {**self.params, "limit": str(want)}
            if cursor is not None:
                params["cursor"] = cursor
            answer = self.client.get(self.path, params=params)
            events: list[dict[str, Any]] = answer.get("events", [])
            cursor = answer.get("next")
            if self.limit is not None:
                events = events[: self.limit - self.read]
            self.read += len(events)
            if events:
                self.last = events[-1]
                yield events
            if not cursor:
                return
        self.cut = True

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for page in self.pages():
            yield from page
