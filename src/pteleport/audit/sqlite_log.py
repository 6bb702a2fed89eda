"""SQLite audit log: table ``events`` with the searched fields as indexed columns.

Columns: ``id`` (arrival number, never reused thanks to AUTOINCREMENT, the ``after_id``
cursor), ``uid`` (unique: re-emits are ignored), ``time`` (microseconds since the Unix
epoch), ``event``, ``sid``, ``user`` and ``data`` (the whole event as JSON).

The file may be the backend's own file (the table names do not clash) or a separate
one. A separate file (the daemon's choice: ``audit.db`` beside ``state.db``) is better:
SQLite has one writer per file, so a busy audit stream would otherwise hold up logins
and certificate issuing.

Searches use a connection of their own (WAL: readers and the writer do not wait for each
other), so a long search never holds up storing events. Order and paging: ``records``.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime
from typing import Any

from common.errors import BadParameter, NotFound
from pteleport.storage.sqlite_conn import MEMORY, SQLiteConnection

from .records import Order, Page, check_aware, make_page, make_query, to_micros, to_stored

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        uid TEXT NOT NULL UNIQUE,
        time INTEGER NOT NULL,
        event TEXT NOT NULL,
        sid TEXT,
        "user" TEXT,
        data TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS events_time ON events (time, id)",
    "CREATE INDEX IF NOT EXISTS events_event ON events (event, time)",
    "CREATE INDEX IF NOT EXISTS events_sid ON events (sid, time)",
    'CREATE INDEX IF NOT EXISTS events_user ON events ("user", time)',
)


_micros = to_micros


class SQLiteAuditLog:
    """An AuditLog in an SQLite file (created 0600, WAL, shared safely by processes)."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 10.0) -> None:
        self._db = SQLiteConnection(path, busy_timeout=busy_timeout)
        try:
            self._db.write(lambda conn: [conn.execute(s) for s in _SCHEMA])
            # A reader of its own (an in-memory database has only the one connection).
            self._reader = self._db if str(path) == MEMORY else SQLiteConnection(path, busy_timeout=busy_timeout)
        except BaseException:
            self._db.close()
            raise

    def emit(self, event: dict[str, Any]) -> None:
        self.emit_batch([event])

    def emit_batch(self, events: list[dict[str, Any]]) -> None:
        if not isinstance(events, list):
            raise BadParameter("emit_batch takes a list of events")
        rows = [(s.uid, _micros(s.time), s.event, s.sid, s.user, s.data) for s in map(to_stored, events)]
        if not rows:
            return
        self._db.write(
            lambda conn: conn.executemany(
                'INSERT INTO events (uid, time, event, sid, "user", data) VALUES (?, ?, ?, ?, ?, ?) '
                "ON CONFLICT (uid) DO NOTHING",
                rows,
            )
        )

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
        q = make_query(
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
        where: list[str] = []
        args: list[Any] = []
        if q.from_time is not None:
            where.append("time >= ?")
            args.append(_micros(q.from_time))
        if q.to_time is not None:
            where.append("time < ?")
            args.append(_micros(q.to_time))
        if q.event_types is not None:
            where.append(f"event IN ({', '.join('?' * len(q.event_types))})")
            args.extend(q.event_types)
        if q.user is not None:
            where.append('"user" = ?')
            args.append(q.user)
        if q.sid is not None:
            where.append("sid = ?")
            args.append(q.sid)
        desc = q.order == "desc"
        if q.cursor is not None and q.cursor.time_us is None:
            where.append("id > ?")
            args.append(q.cursor.id)
        elif q.cursor is not None:
            where.append(f"(time, id) {'<' if desc else '>'} (?, ?)")
            args.extend((q.cursor.time_us, q.cursor.id))
        elif q.after_id is not None:
            where.append("id > (SELECT id FROM events WHERE uid = ?)")
            args.append(q.after_id)
        if q.arrival_order:
            ordering = "id"
        else:
            direction = "DESC" if desc else "ASC"
            ordering = f"time {direction}, id {direction}"
        # Only fixed fragments above go into the text; every value is a parameter.
        conditions = " AND ".join(where) or "1"
        sql = f"SELECT id, time, data FROM events WHERE {conditions} ORDER BY {ordering} LIMIT {q.limit + 1:d}"  # noqa: S608

        def run(conn: sqlite3.Connection) -> list[tuple[int, int, str]]:
            if q.after_id is not None and q.cursor is None:
                known = conn.execute("SELECT 1 FROM events WHERE uid = ?", (q.after_id,)).fetchone()
                if known is None:
                    raise NotFound(f"audit event {q.after_id} not found; it may have been pruned")
            return conn.execute(sql, args).fetchall()

        return make_page(self._reader.read(run), q)

    def prune(self, before: datetime) -> int:
        cutoff = _micros(check_aware("before", before))
        return self._db.write(lambda conn: conn.execute("DELETE FROM events WHERE time < ?", (cutoff,)).rowcount)

    def close(self) -> None:
        if self._reader is not self._db:
            self._reader.close()
        self._db.close()
