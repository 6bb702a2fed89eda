"""Change propagation: a write by another process wakes this one's access snapshot and index.

Two backend objects on one store stand for two processes (SQLite: one file; PostgreSQL:
one database; memory: one object). The snapshot and the registration index poll only
once an hour here, so what brings them up to date is the change feed and nothing else.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pteleport.auth.access import FEED_KINDS, AccessStateSource
from pteleport.services.changes import ChangeWatcher
from pteleport.services.store import JsonStore
from pteleport.storage.memory import MemoryBackend
from pteleport.storage.postgres import PostgresBackend
from pteleport.storage.sqlite import SQLiteBackend

HOUR = 3600.0


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def two_processes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], object]]:
    opened: list = []
    if request.param == "memory":
        shared = MemoryBackend()

        def opener() -> object:
            return shared
    elif request.param == "sqlite":
        path = tmp_path / "backend.db"

        def opener() -> object:
            backend = SQLiteBackend(path)
            opened.append(backend)
            return backend
    else:
        pg = request.getfixturevalue("pg")
        dbname = f"feed_{uuid.uuid4().hex[:10]}"
        pg.execute(f'CREATE DATABASE "{dbname}"')
        dsn = f"host={pg.socket_dir} port={pg.port} user=postgres dbname={dbname}"

        def opener() -> object:
            backend = PostgresBackend(dsn)
            opened.append(backend)
            return backend
    yield opener
    for backend in opened:
        backend.close()
    if request.param == "postgres":
        pg.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def _user(name: str, roles: list[str]) -> dict:
    return {"kind": "user", "version": "v2", "metadata": {"name": name}, "spec": {"roles": roles}}


async def _until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "the change did not arrive"
        await asyncio.sleep(0.05)


def test_a_user_changed_by_another_process_reaches_this_snapshot_by_the_feed(two_processes) -> None:
    async def main() -> None:
        here, there = two_processes(), two_processes()
        clock = lambda: datetime.now(UTC)  # noqa: E731
        source = AccessStateSource(JsonStore(here, "users"), JsonStore(here, "locks"), JsonStore(here, "roles"), clock)
        watcher = ChangeWatcher(here)
        watcher.subscribe(FEED_KINDS, source.poke)
        assert watcher.start(asyncio.get_running_loop())
        runner = asyncio.get_running_loop().create_task(source.run(poll_every=HOUR))
        try:
            await _until(lambda: source._state is not None)
            JsonStore(there, "users").put("zed", _user("zed", ["access"]))
            await _until(lambda: "zed" in source.current().users)
            JsonStore(there, "users").put("zed", _user("zed", ["auditor"]))
            await _until(lambda: source.current().users["zed"].roles == frozenset({"auditor"}))
        finally:
            runner.cancel()
            watcher.stop()

    asyncio.run(main())


def test_a_role_and_a_lock_made_by_another_process_reach_this_snapshot_by_the_feed(two_processes) -> None:
    """Issue 13 names role and lock changes too: they come by the same feed (the snapshot's kinds)."""
    from pteleport.rbac.locks import Lock, LockMetadata, LockSpec, LockTarget, lock_to_dict

    async def main() -> None:
        here, there = two_processes(), two_processes()
        clock = lambda: datetime.now(UTC)  # noqa: E731
        source = AccessStateSource(JsonStore(here, "users"), JsonStore(here, "locks"), JsonStore(here, "roles"), clock)
        watcher = ChangeWatcher(here)
        watcher.subscribe(FEED_KINDS, source.poke)
        assert watcher.start(asyncio.get_running_loop())
        runner = asyncio.get_running_loop().create_task(source.run(poll_every=HOUR))
        try:
            await _until(lambda: source._state is not None)
            before = source.current().roles_version
            role = {"kind": "role", "version": "v3", "metadata": {"name": "reader"}, "spec": {"allow": {}}}
            JsonStore(there, "roles").put("reader", role)
            await _until(lambda: source.current().roles_version != before)
            lock = Lock(metadata=LockMetadata(name="lock-1"),
                        spec=LockSpec(target=LockTarget(user="zed"), message="gone", created_at=clock(),
                                      created_by="admin"))
            JsonStore(there, "locks").put("lock-1", lock_to_dict(lock))
            await _until(lambda: [lk.name for lk in source.current().locks] == ["lock-1"])
        finally:
            runner.cancel()
            watcher.stop()

    asyncio.run(main())


def test_a_registration_stored_by_another_process_reaches_this_index_by_the_feed(two_processes) -> None:
    from pteleport.auth.databases import RegistrationIndex

    class Ctx:
        def __init__(self, backend) -> None:  # type: ignore[no-untyped-def]
            self.db_servers = JsonStore(backend, "db_servers")

        def clock(self) -> datetime:
            return datetime.now(UTC)

    async def main() -> None:
        here, there = two_processes(), two_processes()
        index = RegistrationIndex(Ctx(here))  # type: ignore[arg-type]
        watcher = ChangeWatcher(here)
        watcher.subscribe(("db_servers",), index.poke)
        assert watcher.start(asyncio.get_running_loop())
        runner = asyncio.get_running_loop().create_task(index.run(poll_every=HOUR))
        try:
            await asyncio.sleep(0.2)
            assert index.hosts_for("aurora") == []
            doc = {"metadata": {"name": "aurora"}, "spec": {"host_id": "host-9"}}
            JsonStore(there, "db_servers").put("aurora/host-9", doc, expires=datetime.now(UTC) + timedelta(minutes=1))
            await _until(lambda: index.hosts_for("aurora") == ["host-9"])
        finally:
            runner.cancel()
            watcher.stop()

    asyncio.run(main())
