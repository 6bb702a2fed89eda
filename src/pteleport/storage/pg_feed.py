"""The PostgreSQL change feed: a trigger NOTIFYs every change to ``items``; the feed LISTENs.

The trigger (``pteleport_items_notify``, made with the schema under its advisory lock)
sends the changed key's kind (its first segment) on channel ``pteleport_items``; PostgreSQL
folds identical payloads of one transaction into one notice. The feed holds a connection of
its own. When that connection breaks it reconnects with a backoff and reports ``{ALL}``,
since notices sent while it was away are lost (readers then re-read everything).
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg

from common.backoff import Backoff

from .feed import ALL

log = logging.getLogger("pteleport.storage")

CHANNEL = "pteleport_items"

SCHEMA = (
    f"""CREATE OR REPLACE FUNCTION pteleport_items_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('{CHANNEL}', split_part(COALESCE(NEW.key, OLD.key), '/', 1));
        RETURN NULL;
    END $$""",
    """DO $$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'items_notify'
                       AND tgrelid = 'items'::regclass) THEN
            CREATE TRIGGER items_notify AFTER INSERT OR UPDATE OR DELETE ON items
                FOR EACH ROW EXECUTE FUNCTION pteleport_items_notify();
        END IF;
    END $$""",
)


class PostgresFeed:
    def __init__(self, dsn: str, connect_timeout: int = 10) -> None:
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._backoff = Backoff(0.1, 2.0)
        self._connect()

    def _connect(self) -> None:
        conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=self._connect_timeout)
        conn.execute(f"LISTEN {CHANNEL}")
        self._conn = conn

    def wait(self, timeout: float) -> set[str]:
        with self._lock:
            if self._closed:
                return set()
            if self._conn is None or self._conn.closed:
                try:
                    self._connect()
                except psycopg.Error as exc:
                    log.debug("the change feed cannot reach PostgreSQL yet: %s", exc)
                    time.sleep(min(self._backoff.next_delay(), timeout))
                    return set()
                self._backoff.reset()
                return {ALL}
            changed: set[str] = set()
            try:
                for notice in self._conn.notifies(timeout=timeout, stop_after=1):
                    changed.add(notice.payload or ALL)
                # Take what else is queued without waiting.
                for notice in self._conn.notifies(timeout=0):
                    changed.add(notice.payload or ALL)
            except psycopg.Error as exc:
                log.debug("the change feed lost its PostgreSQL connection: %s", exc)
                try:
                    self._conn.close()
                except psycopg.Error:
                    pass
                self._conn = None
                return {ALL}
            return changed

    def close(self) -> None:
        """Stop; waits for a ``wait`` under way to end (at most its timeout)."""
        self._closed = True
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                except psycopg.Error:
                    pass
                self._conn = None
