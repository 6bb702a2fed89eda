"""PostgreSQL backend: several auth/proxy processes can share one database.

Objects (created if missing, under an advisory lock so that processes starting together
do not race): table ``items`` with ``key TEXT COLLATE "C"`` (byte order, the same order
as SQLite and Python) and sequence ``items_revision_seq`` for revisions. Every
operation is one statement in its own transaction, so conditional writes
(create, update, compare-and-swap) are atomic against other processes: PostgreSQL
re-checks the WHERE clause on the newest row version after a concurrent update.
Expired rows are invisible at once and deleted lazily, like the SQLite backend.

The connection heals after a server restart (``pg_conn``): a call whose connection broke
before COMMIT runs again on a new connection, reads always; a write cut off during COMMIT
fails with ConnectionProblem, because it may or may not have been kept.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg

from common.errors import AlreadyExists, CompareFailed, NotFound

from .base import (
    Clock,
    Item,
    check_key,
    check_limit,
    check_prefix,
    check_swap,
    normalise_item,
    prefix_end,
    utc_now,
)
from .pg_conn import PgConnection
from .pg_feed import SCHEMA as _FEED_SCHEMA
from .pg_feed import PostgresFeed

T = TypeVar("T")

# Arbitrary constant naming the schema-creation advisory lock of this module.
_SCHEMA_LOCK = 0x7074_6B76

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS items (
        key TEXT COLLATE "C" PRIMARY KEY,
        value BYTEA NOT NULL,
        expires TIMESTAMPTZ,
        revision BIGINT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS items_expires ON items (expires) WHERE expires IS NOT NULL",
    "CREATE SEQUENCE IF NOT EXISTS items_revision_seq",
    *_FEED_SCHEMA,  # NOTIFY on every change (the change feed, ``watch``)
)

# Every statement below takes the clock's time as %(now)s; "live" means
# (expires IS NULL OR expires > %(now)s).
_GET = """SELECT key, value, expires, revision FROM items
    WHERE key = %(key)s AND (expires IS NULL OR expires > %(now)s)"""

_CREATE = """INSERT INTO items (key, value, expires, revision)
    VALUES (%(key)s, %(value)s, %(expires)s, nextval('items_revision_seq'))
    ON CONFLICT (key) DO UPDATE
        SET value = EXCLUDED.value, expires = EXCLUDED.expires, revision = EXCLUDED.revision
        WHERE items.expires IS NOT NULL AND items.expires <= %(now)s
    RETURNING revision"""

_PUT = """INSERT INTO items (key, value, expires, revision)
    VALUES (%(key)s, %(value)s, %(expires)s, nextval('items_revision_seq'))
    ON CONFLICT (key) DO UPDATE
        SET value = EXCLUDED.value, expires = EXCLUDED.expires, revision = EXCLUDED.revision
    RETURNING revision"""

_UPDATE = """UPDATE items
    SET value = %(value)s, expires = %(expires)s, revision = nextval('items_revision_seq')
    WHERE key = %(key)s AND (expires IS NULL OR expires > %(now)s)
    RETURNING revision"""

_SWAP = """UPDATE items
    SET value = %(value)s, expires = %(expires)s, revision = nextval('items_revision_seq')
    WHERE key = %(key)s AND (expires IS NULL OR expires > %(now)s) AND value = %(old)s
        AND (%(old_rev)s::bigint = 0 OR revision = %(old_rev)s::bigint)
    RETURNING revision"""

_DELETE = """DELETE FROM items WHERE key = %(key)s
    RETURNING (expires IS NULL OR expires > %(now)s)"""

# Prefix ranges compare keys (never LIKE). The bounded form lets the planner scan just
# the prefix's slice of the primary key; the unbounded one is for the empty prefix.
_RANGE = {
    True: """SELECT key, value, expires, revision FROM items
        WHERE key >= %(start)s AND key < %(end)s AND (expires IS NULL OR expires > %(now)s)
        ORDER BY key LIMIT %(limit)s""",
    False: """SELECT key, value, expires, revision FROM items
        WHERE key >= %(start)s AND (expires IS NULL OR expires > %(now)s)
        ORDER BY key LIMIT %(limit)s""",
}
_DELETE_RANGE = {
    True: """DELETE FROM items WHERE key >= %(start)s AND key < %(end)s
        RETURNING (expires IS NULL OR expires > %(now)s)""",
    False: """DELETE FROM items WHERE key >= %(start)s
        RETURNING (expires IS NULL OR expires > %(now)s)""",
}


class PostgresBackend:
    """A Backend on a PostgreSQL database given by a libpq DSN."""

    def __init__(
        self,
        dsn: str,
        clock: Clock = utc_now,
        *,
        connect_timeout: int = 10,
        prune_interval: timedelta = timedelta(minutes=1),
    ) -> None:
        self._clock = clock
        self._prune_interval = prune_interval
        self._last_prune: datetime | None = None
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        self._db = PgConnection(dsn, connect_timeout=connect_timeout)
        try:
            self._db.run(_create_schema)
        except BaseException:
            self._db.close()
            raise

    def get(self, key: str) -> Item:
        check_key(key)
        row = self._fetch(_GET, {"key": key}, write=False)
        if row is None:
            raise NotFound(f"{key!r} not found")
        return _item(row)

    def create(self, item: Item) -> Item:
        item = normalise_item(item)
        row = self._fetch(_CREATE, _params(item))
        if row is None:
            raise AlreadyExists(f"{item.key!r} already exists")
        return _stored(item, row[0])

    def put(self, item: Item) -> Item:
        item = normalise_item(item)
        row = self._fetch(_PUT, _params(item))
        assert row is not None
        return _stored(item, row[0])

    def update(self, item: Item) -> Item:
        item = normalise_item(item)
        row = self._fetch(_UPDATE, _params(item))
        if row is None:
            raise NotFound(f"{item.key!r} not found")
        return _stored(item, row[0])

    def compare_and_swap(self, expected: Item, new: Item) -> Item:
        expected, new = check_swap(expected, new)
        params = _params(new) | {"old": expected.value, "old_rev": expected.revision}
        row = self._fetch(_SWAP, params)
        if row is None:
            raise CompareFailed(f"{expected.key!r} was changed by someone else; read it again and retry")
        return _stored(new, row[0])

    def delete(self, key: str) -> None:
        check_key(key)
        row = self._fetch(_DELETE, {"key": key})
        if row is None or not row[0]:
            raise NotFound(f"{key!r} not found")

    def get_range(self, prefix: str, limit: int | None = None) -> list[Item]:
        check_prefix(prefix)
        check_limit(limit)
        params = _range(prefix) | {"now": self._clock(), "limit": limit}
        sql = _RANGE[params["end"] is not None]
        return self._db.run(
            lambda conn: [_item(row) for row in conn.execute(sql, params).fetchall()], idempotent=True
        )

    def delete_range(self, prefix: str) -> int:
        check_prefix(prefix)
        params = _range(prefix)
        sql = _DELETE_RANGE[params["end"] is not None]

        def op(conn: psycopg.Connection) -> int:
            rows = conn.execute(sql, params).fetchall()
            return sum(1 for (live,) in rows if live)

        return self._write(op, params)

    def prune_expired(self) -> int:
        now = self._clock()
        count = self._db.run(lambda conn: _prune(conn, now))
        self._last_prune = now
        return count

    def close(self) -> None:
        self._db.close()

    def watch(self) -> PostgresFeed:
        """A change feed (LISTEN on its own connection): see ``storage.feed``."""
        return PostgresFeed(self._dsn, self._connect_timeout)

    def _fetch(self, sql: str, params: dict[str, Any], *, write: bool = True) -> tuple | None:
        """One row (or None) of one statement; ``params`` gains ``now``."""
        if not write:
            params = params | {"now": self._clock()}
            return self._db.run(lambda conn: conn.execute(sql, params).fetchone(), idempotent=True)
        return self._write(lambda conn: conn.execute(sql, params).fetchone(), params)

    def _write(self, op: Callable[[psycopg.Connection], T], params: dict[str, Any]) -> T:
        """Run a write in one transaction, sweeping expired rows now and then."""
        now = self._clock()
        params["now"] = now
        sweep = self._last_prune is None or now - self._last_prune >= self._prune_interval

        def run(conn: psycopg.Connection) -> T:
            if sweep:
                _prune(conn, now)
            return op(conn)

        result = self._db.run(run)
        if sweep:
            self._last_prune = now
        return result


def _create_schema(conn: psycopg.Connection) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
    for statement in _SCHEMA:
        conn.execute(statement)


def _prune(conn: psycopg.Connection, now: datetime) -> int:
    return conn.execute("DELETE FROM items WHERE expires <= %s", (now,)).rowcount


def _params(item: Item) -> dict[str, Any]:
    return {"key": item.key, "value": item.value, "expires": item.expires}


def _stored(item: Item, revision: int) -> Item:
    return Item(item.key, item.value, item.expires, revision)


def _range(prefix: str) -> dict[str, Any]:
    return {"start": prefix, "end": prefix_end(prefix)}


def _item(row: tuple) -> Item:
    expires = row[2].astimezone(UTC) if row[2] is not None else None
    return Item(key=row[0], value=bytes(row[1]), expires=expires, revision=row[3])
