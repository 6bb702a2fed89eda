"""SQLite backend: the embedded default, safe for threads and for processes sharing a file.

Tables (created if missing): ``items`` (key, value, expires, revision) and
``items_revision`` (one row, the counter revisions are taken from). ``expires`` is
stored as microseconds since the Unix epoch. Expired rows are invisible at once and
deleted lazily: by writes that meet them, by a sweep at most once per
``prune_interval`` during writes, or by ``prune_expired()``.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

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
from .feed import SQLITE_SCHEMA as _FEED_SCHEMA
from .feed import SQLiteFeed
from .sqlite_conn import MEMORY, SQLiteConnection

T = TypeVar("T")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS items (
        key TEXT PRIMARY KEY,
        value BLOB NOT NULL,
        expires INTEGER,
        revision INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS items_expires ON items (expires) WHERE expires IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS items_revision (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        value INTEGER NOT NULL
    )""",
    "INSERT OR IGNORE INTO items_revision (id, value) VALUES (1, 0)",
    *_FEED_SCHEMA,  # counters per kind of key (the change feed, ``watch``)
)

_GET = "SELECT key, value, expires, revision FROM items WHERE key = ? AND (expires IS NULL OR expires > ?)"

# Prefix ranges compare keys (never LIKE); the unbounded form is for the empty prefix.
_RANGE = {
    True: "SELECT key, value, expires, revision FROM items "
    "WHERE key >= ? AND key < ? AND (expires IS NULL OR expires > ?) ORDER BY key LIMIT ?",
    False: "SELECT key, value, expires, revision FROM items "
    "WHERE key >= ? AND (expires IS NULL OR expires > ?) ORDER BY key LIMIT ?",
}
_COUNT_RANGE = {
    True: "SELECT count(*) FROM items WHERE key >= ? AND key < ? AND (expires IS NULL OR expires > ?)",
    False: "SELECT count(*) FROM items WHERE key >= ? AND (expires IS NULL OR expires > ?)",
}
_DELETE_RANGE = {
    True: "DELETE FROM items WHERE key >= ? AND key < ?",
    False: "DELETE FROM items WHERE key >= ?",
}


def _to_micros(when: datetime) -> int:
    return (when - _EPOCH) // _MICRO


def _from_micros(micros: int | None) -> datetime | None:
    return None if micros is None else _EPOCH + micros * _MICRO


class SQLiteBackend:
    """A Backend on one SQLite file (created 0600 with its parent directories)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        clock: Clock = utc_now,
        *,
        busy_timeout: float = 10.0,
        prune_interval: timedelta = timedelta(minutes=1),
    ) -> None:
        self._clock = clock
        self._prune_interval = prune_interval
        self._last_prune: datetime | None = None
        self._db = SQLiteConnection(path, busy_timeout=busy_timeout)
        try:
            self._db.write(self._create_schema)
        except BaseException:
            self._db.close()
            raise

    @staticmethod
    def _create_schema(conn: sqlite3.Connection) -> None:
        for statement in _SCHEMA:
            conn.execute(statement)

    def get(self, key: str) -> Item:
        check_key(key)
        now = _to_micros(self._clock())

        row = self._db.read(lambda conn: _live_row(conn, key, now))
        if row is None:
            raise NotFound(f"{key!r} not found")
        return _item(row)

    def create(self, item: Item) -> Item:
        item = normalise_item(item)

        def op(conn: sqlite3.Connection, now: int) -> Item:
            if _live_row(conn, item.key, now) is not None:
                raise AlreadyExists(f"{item.key!r} already exists")
            return _store(conn, item)

        return self._write(op)

    def put(self, item: Item) -> Item:
        item = normalise_item(item)
        return self._write(lambda conn, now: _store(conn, item))

    def update(self, item: Item) -> Item:
        item = normalise_item(item)

        def op(conn: sqlite3.Connection, now: int) -> Item:
            if _live_row(conn, item.key, now) is None:
                raise NotFound(f"{item.key!r} not found")
            return _store(conn, item)

        return self._write(op)

    def compare_and_swap(self, expected: Item, new: Item) -> Item:
        expected, new = check_swap(expected, new)

        def op(conn: sqlite3.Connection, now: int) -> Item:
            row = _live_row(conn, expected.key, now)
            if (
                row is None
                or bytes(row[1]) != expected.value
                or (expected.revision != 0 and row[3] != expected.revision)
            ):
                raise CompareFailed(f"{expected.key!r} was changed by someone else; read it again and retry")
            return _store(conn, new)

        return self._write(op)

    def delete(self, key: str) -> None:
        check_key(key)

        def op(conn: sqlite3.Connection, now: int) -> None:
            row = conn.execute("DELETE FROM items WHERE key = ? RETURNING expires", (key,)).fetchone()
            if row is None or (row[0] is not None and row[0] <= now):
                raise NotFound(f"{key!r} not found")

        self._write(op)

    def get_range(self, prefix: str, limit: int | None = None) -> list[Item]:
        check_prefix(prefix)
        check_limit(limit)
        now = _to_micros(self._clock())
        bounds = _bounds(prefix)
        args = (*bounds, now, -1 if limit is None else limit)
        sql = _RANGE[len(bounds) == 2]
        return self._db.read(lambda conn: [_item(row) for row in conn.execute(sql, args)])

    def delete_range(self, prefix: str) -> int:
        check_prefix(prefix)
        bounds = _bounds(prefix)
        bounded = len(bounds) == 2

        def op(conn: sqlite3.Connection, now: int) -> int:
            count = conn.execute(_COUNT_RANGE[bounded], (*bounds, now)).fetchone()[0]
            conn.execute(_DELETE_RANGE[bounded], bounds)
            return count

        return self._write(op)

    def prune_expired(self) -> int:
        now = self._clock()
        count = self._db.write(lambda conn: _prune(conn, _to_micros(now)))
        self._last_prune = now
        return count

    def close(self) -> None:
        self._db.close()

    def watch(self) -> SQLiteFeed:
        """A change feed (polls ``PRAGMA data_version`` on its own connection): see ``storage.feed``."""
        if self._db.path == MEMORY:
            raise NotImplementedError("an in-memory SQLite database has no change feed")
        return SQLiteFeed(self._db.path)

    def _write(self, op: Callable[[sqlite3.Connection, int], T]) -> T:
        """Run ``op(conn, now_micros)`` in a write transaction, sweeping expired rows now and then."""
        now = self._clock()
        sweep = self._last_prune is None or now - self._last_prune >= self._prune_interval

        def run(conn: sqlite3.Connection) -> T:
            if sweep:
                _prune(conn, _to_micros(now))
            return op(conn, _to_micros(now))

        result = self._db.write(run)
        if sweep:
            self._last_prune = now
        return result


def _prune(conn: sqlite3.Connection, now: int) -> int:
    return conn.execute("DELETE FROM items WHERE expires <= ?", (now,)).rowcount


def _live_row(conn: sqlite3.Connection, key: str, now: int) -> tuple | None:
    return conn.execute(_GET, (key, now)).fetchone()


def _store(conn: sqlite3.Connection, item: Item) -> Item:
    revision = conn.execute("UPDATE items_revision SET value = value + 1 WHERE id = 1 RETURNING value")
    rev = revision.fetchone()[0]
    expires = None if item.expires is None else _to_micros(item.expires)
    conn.execute(
        "INSERT OR REPLACE INTO items (key, value, expires, revision) VALUES (?, ?, ?, ?)",
        (item.key, item.value, expires, rev),
    )
    return Item(item.key, item.value, item.expires, rev)


def _bounds(prefix: str) -> tuple[str, ...]:
    """(start, end) of the keys with ``prefix``, or (start,) when there is no end."""
    end = prefix_end(prefix)
    return (prefix,) if end is None else (prefix, end)


def _item(row: tuple) -> Item:
    return Item(key=row[0], value=bytes(row[1]), expires=_from_micros(row[2]), revision=row[3])
