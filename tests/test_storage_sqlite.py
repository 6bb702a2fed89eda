"""What only the SQLite backend promises: private files, WAL, several processes, lazy pruning."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from common.errors import ConnectionProblem
from pteleport.storage.base import Item
from pteleport.storage.sqlite import SQLiteBackend


def test_file_and_parents_are_created_private(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "state.db"
    SQLiteBackend(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_database_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    backend = SQLiteBackend(path)
    backend.put(Item("k", b"v"))
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    backend.close()


def test_unopenable_path_is_a_connection_problem(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConnectionProblem):
        SQLiteBackend(blocker / "state.db")


def test_expired_rows_are_deleted_lazily_on_write(tmp_path: Path) -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    path = tmp_path / "state.db"
    backend = SQLiteBackend(path, clock=lambda: now[0], prune_interval=timedelta(minutes=1))
    backend.put(Item("old", b"v", now[0] + timedelta(seconds=1)))
    now[0] += timedelta(minutes=2)
    backend.put(Item("other", b"v"))
    with sqlite3.connect(path) as conn:
        assert [r[0] for r in conn.execute("SELECT key FROM items")] == ["other"]
    backend.close()


WORKER = textwrap.dedent(
    """
    import sys
    from common.errors import CompareFailed
    from pteleport.storage.base import Item
    from pteleport.storage.sqlite import SQLiteBackend

    backend = SQLiteBackend(sys.argv[1])
    for _ in range(int(sys.argv[2])):
        while True:
            current = backend.get("counter")
            try:
                backend.compare_and_swap(current, Item("counter", str(int(current.value) + 1).encode()))
                break
            except CompareFailed:
                pass
    backend.close()
    """
)


def test_several_processes_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    backend = SQLiteBackend(path)
    backend.create(Item("counter", b"0"))
    processes, increments = 3, 25
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(path), str(increments)]) for _ in range(processes)]
    assert [w.wait(timeout=120) for w in workers] == [0] * processes
    assert backend.get("counter").value == str(processes * increments).encode()
    backend.close()
