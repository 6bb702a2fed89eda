"""What only the PostgreSQL backend promises: clear errors and reconnecting after a drop."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from common.backoff import Backoff
from common.errors import ConnectionProblem
from pteleport.audit.postgres_log import PostgresAuditLog
from pteleport.storage.base import Item
from pteleport.storage.pg_conn import PgConnection
from pteleport.storage.postgres import PostgresBackend
from tests.pgserver import PgServer


@pytest.fixture(scope="module")
def pg_db(pg: Any) -> Iterator[tuple[Any, str, str]]:
    dbname = f"storage_pg_{uuid.uuid4().hex[:12]}"
    pg.execute(f'CREATE DATABASE "{dbname}"')
    yield pg, dbname, f"host={pg.socket_dir} port={pg.port} user=postgres dbname={dbname}"
    pg.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def test_unreachable_server_is_a_connection_problem(tmp_path: Any) -> None:
    dsn = f"host={tmp_path} port=1 user=postgres dbname=none connect_timeout=2"
    with pytest.raises(ConnectionProblem) as err:
        PostgresBackend(dsn)
    assert "password" not in err.value.message


def _cut_connections(pg: Any, dbname: str) -> None:
    """What a server restart does to every client: their backends are terminated."""
    pg.execute(
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{dbname}' AND pid <> pg_backend_pid()"
    )


def test_a_read_after_the_connection_is_cut_succeeds_on_a_new_connection(
    pg_db: tuple[Any, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    pg, dbname, dsn = pg_db
    backend = PostgresBackend(dsn)
    backend.put(Item("k", b"v"))
    _cut_connections(pg, dbname)
    with caplog.at_level(logging.INFO, logger="pteleport.storage"):
        assert backend.get("k").value == b"v"
        assert backend.get_range("k")[0].value == b"v"
    lost = [r for r in caplog.records if "lost the connection to the PostgreSQL storage database" in r.message]
    back = [r for r in caplog.records if "connection to the PostgreSQL storage database is back" in r.message]
    assert len(lost) == 1 and lost[0].levelno == logging.WARNING
    assert len(back) == 1
    backend.close()


def test_a_write_cut_off_before_commit_is_done_once_on_a_new_connection(pg_db: tuple[Any, str, str]) -> None:
    pg, dbname, dsn = pg_db
    backend = PostgresBackend(dsn)
    backend.delete_range("w/")
    first = backend.create(Item("w/one", b"1"))
    _cut_connections(pg, dbname)
    swapped = backend.compare_and_swap(first, Item("w/one", b"2"))
    assert backend.get("w/one") == swapped
    _cut_connections(pg, dbname)
    backend.create(Item("w/two", b"x"))  # not AlreadyExists: the first try kept nothing
    assert [i.key for i in backend.get_range("w/")] == ["w/one", "w/two"]
    backend.close()


def test_a_write_cut_off_during_commit_is_not_repeated_and_says_so(pg_db: tuple[Any, str, str]) -> None:
    """The connection dies after the statements and before COMMIT's answer: the outcome is
    unknown to the client, so it must not run the write again and must say so."""
    pg, _dbname, dsn = pg_db
    conn = PgConnection(dsn)
    conn.run(lambda c: c.execute("CREATE TABLE IF NOT EXISTS commit_cut (n int)"))
    calls = []

    def write_then_lose_the_connection(c: Any) -> None:
        calls.append(1)
        c.execute("INSERT INTO commit_cut VALUES (1)")
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        pg.execute(f"SELECT pg_terminate_backend({pid}, 5000)")

    with pytest.raises(ConnectionProblem, match="may or may not have been saved; check, and try again"):
        conn.run(write_then_lose_the_connection)
    assert calls == [1]
    assert conn.run(lambda c: c.execute("SELECT count(*) FROM commit_cut").fetchone()[0], idempotent=True) == 0
    conn.close()


@pytest.mark.slow  # starts its own server
def test_a_dead_server_is_tried_again_only_after_the_backoff(tmp_path: Any) -> None:
    """While the server is gone, calls fail at once ("try again") without a connect attempt
    each; after the delay, one attempt."""
    server = PgServer.start(tmp_path)
    try:
        now = [100.0]
        conn = PgConnection(
            server.superuser_dsn(), monotonic=lambda: now[0], backoff=Backoff(1.0, 4.0, random=lambda: 0.5)
        )
        assert conn.run(lambda c: c.execute("SELECT 1").fetchone()[0]) == 1
        server.pause()
        with pytest.raises(ConnectionProblem, match="try again"):
            conn.run(lambda c: c.execute("SELECT 1").fetchone()[0], idempotent=True)
        with pytest.raises(ConnectionProblem, match="reconnecting, try again in a few seconds") as fast:
            conn.run(lambda c: c.execute("SELECT 1").fetchone()[0], idempotent=True)
        assert "next attempt in 1.0s" in (fast.value.detail or "")
        server.resume()
        with pytest.raises(ConnectionProblem, match="reconnecting"):
            conn.run(lambda c: c.execute("SELECT 1").fetchone()[0])  # still inside the delay
        now[0] += 1.0
        assert conn.run(lambda c: c.execute("SELECT 1").fetchone()[0]) == 1
        assert conn.reconnects == 1
        conn.close()
    finally:
        server.stop()


@pytest.mark.slow  # starts its own server
def test_backend_and_audit_log_survive_a_server_restart(tmp_path: Any) -> None:
    server = PgServer.start(tmp_path)
    try:
        dsn = server.superuser_dsn()
        backend = PostgresBackend(dsn)
        audit = PostgresAuditLog(dsn)
        backend.put(Item("k", b"v"))
        server.restart()
        assert backend.get("k").value == b"v"
        backend.put(Item("k", b"after"))
        audit.emit({"event": "x", "uid": "u1", "time": "2026-11-24T13:00:00.000Z"})
        assert [e["uid"] for e in audit.search()] == ["u1"]
        assert backend.get("k").value == b"after"
        backend.close()
        audit.close()
    finally:
        server.stop()


def test_several_backends_create_the_schema_together(pg_db: tuple[Any, str, str]) -> None:
    pg, dbname, dsn = pg_db
    pg.execute("DROP TABLE IF EXISTS items; DROP SEQUENCE IF EXISTS items_revision_seq", dbname=dbname)
    errors: list[BaseException] = []
    opened: list[PostgresBackend] = []

    def open_one() -> None:
        try:
            opened.append(PostgresBackend(dsn))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=open_one) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    for backend in opened:
        backend.close()
