"""One psycopg connection shared by threads, each call in its own transaction.

Calls are serialised by a lock. When the connection breaks (server restart, network),
the call fails with ConnectionProblem and the next call opens a new connection; a
failed call is never retried here, because a write may have committed before the
connection dropped. The DSN is never put into messages (it may hold a password).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import psycopg

from common.errors import ConnectionProblem

T = TypeVar("T")


class PgConnection:
    """Runs functions on a lazily (re)opened autocommit connection inside a transaction."""

    def __init__(self, dsn: str, *, connect_timeout: int = 10, what: str = "PostgreSQL storage") -> None:
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        self._what = what
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        self._closed = False

    def run(self, fn: Callable[[psycopg.Connection], T]) -> T:
        """Run ``fn(conn)`` in one transaction; psycopg errors become ConnectionProblem."""
        with self._lock:
            conn = self._connect()
            try:
                with conn.transaction():
                    return fn(conn)
            except psycopg.Error as err:
                if conn.broken or conn.closed:
                    self._drop()
                raise ConnectionProblem(f"the {self._what} database failed; try again", str(err)) from err

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()

    def _connect(self) -> psycopg.Connection:
        if self._closed:
            raise ConnectionProblem(f"the {self._what} connection is closed")
        if self._conn is not None and (self._conn.closed or self._conn.broken):
            self._drop()
        if self._conn is None:
            try:
                self._conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=self._connect_timeout)
            except psycopg.Error as err:
                raise ConnectionProblem(f"cannot reach the {self._what} database", str(err)) from err
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None
