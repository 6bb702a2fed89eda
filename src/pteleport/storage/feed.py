"""Change feeds: which parts of the backend changed, told to every process that shares it.

``backend.watch()`` opens a ``ChangeFeed``; ``feed.wait(timeout)`` blocks (call it in a
thread) until some item changed, and returns the changed *kinds*: the first segment of
each changed key (``users``, ``roles``, ``locks``, ``db_servers``, ``proxies``...), or
``{ALL}`` when it cannot say which (after a reconnect, when changes may have been missed).
An empty set means the timeout passed with no change. A change made by any process on the
same backend is reported, this process's own included.

- PostgreSQL (``pg_feed``): a trigger on ``items`` sends ``NOTIFY pteleport_items`` with
  the kind; the feed is a connection that ``LISTEN``s.
- SQLite (here): triggers count changes per kind in ``item_changes``; the feed polls
  ``PRAGMA data_version`` (it moves when another connection commits), and only then reads
  the counters (a cheap poll; the file is local, so this is a single node).
- Memory (here): the backend tells its feeds directly.

Expiry is not a change: readers of expiring items (registrations, proxies) check expiry
themselves.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Protocol

ALL = "*"
SQLITE_POLL = 0.1  # seconds between data_version reads


def kind_of(key: str) -> str:
    return key.split("/", 1)[0]


class ChangeFeed(Protocol):
    def wait(self, timeout: float) -> set[str]:
        """The kinds changed since the last call (``{ALL}``: unknown), waiting up to ``timeout`` s."""
        ...

    def close(self) -> None: ...


class MemoryFeed:
    """Fed by ``MemoryBackend`` on every write."""

    def __init__(self, on_close: object = None) -> None:
        self._cond = threading.Condition()
        self._pending: set[str] = set()
        self._closed = False
        self._on_close = on_close

    def changed(self, key: str) -> None:
        with self._cond:
            self._pending.add(kind_of(key) if key else ALL)
            self._cond.notify_all()

    def wait(self, timeout: float) -> set[str]:
        with self._cond:
            if not self._pending and not self._closed:
                self._cond.wait(timeout)
            pending, self._pending = self._pending, set()
            return pending

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if callable(self._on_close):
            self._on_close(self)


# --- SQLite ------------------------------------------------------------------------------------
SQLITE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS item_changes (
        kind TEXT PRIMARY KEY,
        n INTEGER NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TRIGGER IF NOT EXISTS items_changed_insert AFTER INSERT ON items BEGIN
        INSERT INTO item_changes (kind, n) VALUES (substr(NEW.key, 1, instr(NEW.key || '/', '/') - 1), 1)
            ON CONFLICT (kind) DO UPDATE SET n = n + 1;
    END""",
    """CREATE TRIGGER IF NOT EXISTS items_changed_update AFTER UPDATE ON items BEGIN
        INSERT INTO item_changes (kind, n) VALUES (substr(NEW.key, 1, instr(NEW.key || '/', '/') - 1), 1)
            ON CONFLICT (kind) DO UPDATE SET n = n + 1;
    END""",
    """CREATE TRIGGER IF NOT EXISTS items_changed_delete AFTER DELETE ON items BEGIN
        INSERT INTO item_changes (kind, n) VALUES (substr(OLD.key, 1, instr(OLD.key || '/', '/') - 1), 1)
            ON CONFLICT (kind) DO UPDATE SET n = n + 1;
    END""",
)


class SQLiteFeed:
    """Polls ``PRAGMA data_version`` on its own connection; reads the counters when it moves."""

    def __init__(self, path: str, poll: float = SQLITE_POLL) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5)
        self._poll = poll
        self._lock = threading.Lock()
        self._closed = False
        self._version = self._data_version()
        self._counts = self._read_counts()

    def _data_version(self) -> int:
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def _read_counts(self) -> dict[str, int]:
        try:
            return dict(self._conn.execute("SELECT kind, n FROM item_changes").fetchall())
        except sqlite3.Error:
            return {}

    def wait(self, timeout: float) -> set[str]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self._closed:
                try:
                    version = self._data_version()
                except sqlite3.Error:
                    return {ALL}
                if version != self._version:
                    self._version = version
                    counts = self._read_counts()
                    changed = {k for k, n in counts.items() if self._counts.get(k) != n}
                    self._counts = counts
                    if changed:
                        return changed
                left = deadline - time.monotonic()
                if left <= 0:
                    return set()
                time.sleep(min(self._poll, left))
            return set()

    def close(self) -> None:
        self._closed = True
        with self._lock:
            self._conn.close()
