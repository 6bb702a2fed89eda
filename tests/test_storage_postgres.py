"""What only the PostgreSQL backend promises: clear errors and reconnecting after a drop."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from common.errors import ConnectionProblem
from pteleport.storage.base import Item
from pteleport.storage.postgres import PostgresBackend


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


def test_reconnects_after_the_connection_is_dropped(pg_db: tuple[Any, str, str]) -> None:
    pg, dbname, dsn = pg_db
    backend = PostgresBackend(dsn)
    backend.put(Item("k", b"v"))
    pg.execute(
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{dbname}' AND pid <> pg_backend_pid()"
    )
    with pytest.raises(ConnectionProblem):
        backend.get("k")
    assert backend.get("k").value == b"v"
    backend.close()


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
