"""One SQLite connection shared by threads, set up for several processes on one file.

The file and its parent directories are created private (0600 / 0700); the database
runs in WAL mode so readers never wait for the writer; every write runs in
``BEGIN IMMEDIATE`` so that two processes serialise on the write lock instead of
failing half-way, and ``busy_timeout`` makes them wait for it. Both the storage
backend and the audit log open their file through this class.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from common.errors import ConnectionProblem, PteleportError

T = TypeVar("T")

MEMORY = ":memory:"


def create_private_file(path: Path) -> None:
    """Create ``path`` with mode 0600 (and missing parents with 0700) unless it exists."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)


class SQLiteConnection:
    """A locked sqlite3 connection; ``read`` and ``write`` run a function on it."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 10.0) -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        try:
            if self.path != MEMORY:
                create_private_file(Path(self.path))
            conn = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as err:
            raise ConnectionProblem(f"cannot open the SQLite database {self.path}", str(err)) from err
        self._conn: sqlite3.Connection | None = conn
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            if self.path != MEMORY:
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as err:
            conn.close()
            raise ConnectionProblem(f"cannot set up the SQLite database {self.path}", str(err)) from err

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` outside an explicit transaction (each statement sees committed data)."""
        with self._lock:
            conn = self._open()
            try:
                return fn(conn)
            except sqlite3.Error as err:
                raise self._problem(err) from err

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction; roll back if it raises."""
        with self._lock:
            conn = self._open()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as err:
                raise self._problem(err) from err
            try:
                result = fn(conn)
                conn.execute("COMMIT")
                return result
            except BaseException as err:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(err, sqlite3.Error):
                    raise self._problem(err) from err
                raise

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ConnectionProblem(f"the SQLite database {self.path} is closed")
        return self._conn

    def _problem(self, err: sqlite3.Error) -> PteleportError:
        if isinstance(err, sqlite3.OperationalError) and "locked" in str(err):
            return ConnectionProblem(f"the SQLite database {self.path} stayed locked; try again", str(err))
        return ConnectionProblem(f"the SQLite database {self.path} failed", str(err))
