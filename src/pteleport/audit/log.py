"""The audit log interface; implementations live in their own modules.

``MemoryAuditLog`` (memory_log), ``SQLiteAuditLog`` (sqlite_log) and
``PostgresAuditLog`` (postgres_log) can also be imported from here; they are loaded on
first use so that importing the interface does not import psycopg.

Every log stores an event once per ``uid``: emitting the same uid again (an agent
resending a batch after a failure) changes nothing, even if the content differs.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from .records import Order, Page

if TYPE_CHECKING:
    from .memory_log import MemoryAuditLog
    from .postgres_log import PostgresAuditLog
    from .sqlite_log import SQLiteAuditLog

__all__ = ["AuditLog", "MemoryAuditLog", "Order", "Page", "PostgresAuditLog", "SQLiteAuditLog"]


class AuditLog(Protocol):
    """Where audit events are kept and searched; thread-safe."""

    def emit(self, event: dict[str, Any]) -> None:
        """Store one event (see ``emit_batch``)."""
        ...

    def emit_batch(self, events: list[dict[str, Any]]) -> None:
        """Store events atomically: all of them or, on error, none. Events need string
        ``event``, ``uid`` and RFC 3339 ``time``; others are a BadParameter."""
        ...

    def search(
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
    ) -> list[dict[str, Any]]:
        """The events of ``search_page`` without the cursor (at most ``limit`` of them)."""
        ...

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
        """Events with ``from_time <= time < to_time`` and the given types, user and
        session, at most ``limit``, by time and then arrival (``records`` has the order).
        With ``after_id`` (uid of an event already seen): the events stored after it, in
        storage order (for ``--follow``); NotFound if that event is not in the log (for
        instance pruned). ``next`` of the page is the cursor of the rest, if any."""
        ...

    def prune(self, before: datetime) -> int:
        """Delete events whose time is before ``before``; how many were deleted."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


_LAZY = {
    "MemoryAuditLog": ".memory_log",
    "SQLiteAuditLog": ".sqlite_log",
    "PostgresAuditLog": ".postgres_log",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
