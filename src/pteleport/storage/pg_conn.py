"""One psycopg connection shared by threads, each call in its own transaction, that heals.

Calls are serialised by a lock. When the connection breaks (server restart, failover,
network), it is replaced: the call reconnects at once and, when that is safe, runs again
once on the new connection:

- it is safe when the connection broke before COMMIT was sent: PostgreSQL rolls back a
  transaction whose connection is gone, so nothing of the first try was kept;
- for a read, or a write that may be done twice (``idempotent=True``: the audit log's
  insert-once-per-uid), it is always safe;
- a write that broke during COMMIT may or may not have been kept, so it is not retried:
  the caller gets ConnectionProblem saying to check and try again.

While the server cannot be reached, calls fail fast with ConnectionProblem ("try again")
and a new connection is tried after a backoff (``common.backoff``, 0.1 s doubling to 2 s),
so a dead server costs one connect attempt per delay, not one per call. One WARNING line
is logged when the connection is lost and one INFO line when it is back. The DSN is never
put into messages (it may hold a password).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg

from common.backoff import Backoff
from common.errors import ConnectionProblem

T = TypeVar("T")

log = logging.getLogger("pteleport.storage")

RECONNECT_FIRST = 0.1
RECONNECT_MAX = 2.0


class PgConnection:
    """Runs functions on a lazily (re)opened autocommit connection inside a transaction."""

    def __init__(
        self,
        dsn: str,
        *,
        connect_timeout: int = 10,
        what: str = "PostgreSQL storage",
        monotonic: Callable[[], float] = time.monotonic,
        backoff: Backoff | None = None,
    ) -> None:
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        self._what = what
        self._monotonic = monotonic
        self._backoff = backoff or Backoff(RECONNECT_FIRST, RECONNECT_MAX)
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        self._closed = False
        self._next_try = 0.0  # monotonic time before which no new connection is tried
        self._lost_at: float | None = None  # set while the connection is lost
        self._ever_connected = False  # a first connect that fails is the caller's error, not an outage
        self.reconnects = 0
        """How many times a lost connection was replaced (for tests and diagnostics)."""

    def run(self, fn: Callable[[psycopg.Connection], T], *, idempotent: bool = False) -> T:
        """Run ``fn(conn)`` in one transaction; psycopg errors become ConnectionProblem.

        ``fn`` may run twice (see the module docstring), so it must not have effects
        outside the transaction.
        """
        with self._lock:
            for attempt in (1, 2):
                conn = self._connect()
                committing = False
                try:
                    with conn.transaction():
                        result = fn(conn)
                        committing = True
                except psycopg.Error as err:
                    if not (conn.broken or conn.closed):
                        raise ConnectionProblem(f"the {self._what} database failed; try again", str(err)) from err
                    self._drop()
                    self._lost(err)
                    if attempt == 1 and (idempotent or not committing):
                        continue
                    if committing:
                        raise ConnectionProblem(
                            f"the connection to the {self._what} database broke while saving a change, so it may or "
                            "may not have been saved; check, and try again",
                            str(err),
                        ) from err
                    raise ConnectionProblem(
                        f"the connection to the {self._what} database broke; try again", str(err)
                    ) from err
                self._recovered()
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()

    def _connect(self) -> psycopg.Connection:
        if self._closed:
            raise ConnectionProblem(f"the {self._what} connection is closed")
        if self._conn is not None and (self._conn.closed or self._conn.broken):
            self._drop()
        if self._conn is not None:
            return self._conn
        now = self._monotonic()
        if self._lost_at is not None and now < self._next_try:
            raise ConnectionProblem(
                f"cannot reach the {self._what} database; reconnecting, try again in a few seconds",
                f"next attempt in {self._next_try - now:.1f}s",
            )
        try:
            self._conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=self._connect_timeout)
        except psycopg.Error as err:
            if self._ever_connected:
                self._lost(err)
                self._next_try = self._monotonic() + self._backoff.next_delay()
            raise ConnectionProblem(f"cannot reach the {self._what} database; try again", str(err)) from err
        if self._lost_at is not None:
            self.reconnects += 1
        self._ever_connected = True
        return self._conn

    def _lost(self, err: psycopg.Error) -> None:
        """Note the loss; only the first failure of an outage is logged."""
        if self._lost_at is None:
            self._lost_at = self._monotonic()
            self._backoff.reset()
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            log.warning("lost the connection to the %s database (%s); reconnecting", self._what, reason)

    def _recovered(self) -> None:
        if self._lost_at is not None:
            down = self._monotonic() - self._lost_at
            self._lost_at = None
            self._backoff.reset()
            log.info("the connection to the %s database is back (after %.1fs)", self._what, down)

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None
