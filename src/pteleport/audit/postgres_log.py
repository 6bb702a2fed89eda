"""PostgreSQL audit log: table ``events``, shared by every auth server of a cluster.

Columns as in the SQLite log; ``time`` is TIMESTAMPTZ and ``data`` is JSON (not JSONB,
which cannot hold ``\\u0000``; JSON keeps the text as written). Writers take a
transaction-scoped advisory lock, so arrival numbers (``id``) become visible in order
and a follower reading ``id > last`` never skips an event that committed late.

The connection heals after a server restart (``pteleport.storage.pg_conn``). A batch whose
connection broke is written again on the new connection, even if it broke during COMMIT:
events are stored once per ``uid``, so writing a batch twice stores it once.

Searches use a connection of their own, so a long search never holds up storing events.
Order and paging: ``records``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from common.errors import BadParameter, NotFound
from pteleport.storage.pg_conn import PgConnection

from .records import Order, Page, check_aware, from_micros, make_page, make_query, to_micros, to_stored

# Arbitrary constants naming this module's advisory locks.
_SCHEMA_LOCK = 0x7074_6175
_WRITE_LOCK = 0x7074_6177

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS events (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        uid TEXT NOT NULL UNIQUE,
        time TIMESTAMPTZ NOT NULL,
        event TEXT NOT NULL,
        sid TEXT,
        "user" TEXT,
        data JSON NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS events_time ON events (time, id)",
    "CREATE INDEX IF NOT EXISTS events_event ON events (event, time)",
    "CREATE INDEX IF NOT EXISTS events_sid ON events (sid, time)",
    'CREATE INDEX IF NOT EXISTS events_user ON events ("user", time)',
)


class PostgresAuditLog:
    """An AuditLog in a PostgreSQL database given by a libpq DSN."""

    def __init__(self, dsn: str, *, connect_timeout: int = 10) -> None:
        self._db = PgConnection(dsn, connect_timeout=connect_timeout, what="PostgreSQL audit")
        self._reader = PgConnection(dsn, connect_timeout=connect_timeout, what="PostgreSQL audit")
        try:
            self._db.run(_create_schema)
        except BaseException:
            self.close()
            raise

    def emit(self, event: dict[str, Any]) -> None:
        self.emit_batch([event])

    def emit_batch(self, events: list[dict[str, Any]]) -> None:
        if not isinstance(events, list):
            raise BadParameter("emit_batch takes a list of events")
        rows = [(s.uid, s.time, s.event, s.sid, s.user, s.data) for s in map(to_stored, events)]
        if not rows:
            return

        def write(conn: psycopg.Connection) -> None:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
            with conn.cursor() as cur:
                cur.executemany(
                    'INSERT INTO events (uid, time, event, sid, "user", data) '
                    "VALUES (%s, %s, %s, %s, %s, %s::json) ON CONFLICT (uid) DO NOTHING",
                    rows,
                )

        self._db.run(write, idempotent=True)  # stored once per uid: a second run adds nothing

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
            where.append("time >= %s")
            args.append(q.from_time)
        if q.to_time is not None:
            where.append("time < %s")
            args.append(q.to_time)
        if q.event_types is not None:
            where.append("event = ANY(%s::text[])")
            args.append(list(q.event_types))
        if q.user is not None:
            where.append('"user" = %s')
            args.append(q.user)
        if q.sid is not None:
            where.append("sid = %s")
            args.append(q.sid)
        desc = q.order == "desc"
        after_uid = q.after_id is not None and q.cursor is None
        if q.cursor is not None and q.cursor.time_us is None:
            where.append("id > %s")
            args.append(q.cursor.id)
        elif q.cursor is not None:
            where.append(f"(time, id) {'<' if desc else '>'} (%s, %s)")
            args.extend((from_micros(q.cursor.time_us), q.cursor.id))
        elif after_uid:
            where.append("id > %s")  # the id of after_id, looked up in the same transaction
        if q.arrival_order:
            ordering = "id"
        else:
            direction = "DESC" if desc else "ASC"
            ordering = f"time {direction}, id {direction}"
        # Only fixed fragments above go into the text; every value is a parameter.
        conditions = " AND ".join(where) or "true"
        sql = (
            "SELECT id, time, data::text "  # noqa: S608
            f"FROM events WHERE {conditions} ORDER BY {ordering} LIMIT {q.limit + 1:d}"
        )

        def run(conn: psycopg.Connection) -> list[tuple[int, int, str]]:
            params = list(args)
            if after_uid:
                row = conn.execute("SELECT id FROM events WHERE uid = %s", (q.after_id,)).fetchone()
                if row is None:
                    raise NotFound(f"audit event {q.after_id} not found; it may have been pruned")
                params.append(row[0])
            return [(n, to_micros(t), data) for n, t, data in conn.execute(sql, params).fetchall()]

        return make_page(self._reader.run(run, idempotent=True), q)

    def prune(self, before: datetime) -> int:
        cutoff = check_aware("before", before)
        return self._db.run(
            lambda conn: conn.execute("DELETE FROM events WHERE time < %s", (cutoff,)).rowcount, idempotent=True
        )

    def close(self) -> None:
        self._reader.close()
        self._db.close()


def _create_schema(conn: psycopg.Connection) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
    for statement in _SCHEMA:
        conn.execute(statement)
