"""Audit searches never cut silently: 25,000+ events in a real audit log (SQLite and
PostgreSQL), read through real `pctl audit events` and `ptsh play` processes and through
the auth service."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pteleport.audit import events as ev
from pteleport.audit.memory_log import MemoryAuditLog
from pteleport.audit.sqlite_log import SQLiteAuditLog
from tests.harness import PCTL, PTSH, Cluster, base_env, run

TOTAL = 25_003  # events of the one big session
START = datetime(2026, 11, 24, 13, 0, tzinfo=UTC)


def big_session(sid: str = "big-session", total: int = TOTAL) -> list[dict[str, Any]]:
    """One session of ``total`` events: start, queries (7 per millisecond: ties), end."""
    events = []
    for i in range(total):
        kind, code = (ev.DB_SESSION_QUERY, ev.DB_SESSION_QUERY_CODE)
        if i == 0:
            kind, code = ev.DB_SESSION_START, ev.DB_SESSION_START_CODE
        elif i == total - 1:
            kind, code = ev.DB_SESSION_END, ev.DB_SESSION_END_CODE
        events.append(
            {
                "event": kind,
                "code": code,
                "uid": str(uuid.uuid4()),
                "time": ev.format_time(START + timedelta(milliseconds=i // 7)),
                "cluster_name": "paging",
                "sid": sid,
                "ei": i,
                "user": "alice",
                "db_service": "aurora",
                "db_name": "postgres",
                "db_query": f"select {i}",
                "success": True,
            }
        )
    return events


def seed(log: Any, events: list[dict[str, Any]]) -> None:
    for start in range(0, len(events), 5_000):
        log.emit_batch(events[start : start + 5_000])
    log.close()


# --- the service ------------------------------------------------------------------------------


def test_the_service_pages_a_session_and_every_search_without_a_cap(tmp_path: Path) -> None:
    from common.identity import KIND_ADMIN, Identity
    from pteleport.auth.audit import PAGE_LIMIT
    from pteleport.auth.context import AuthSettings
    from pteleport.auth.server import AuthServer
    from pteleport.storage.memory import MemoryBackend

    log = SQLiteAuditLog(tmp_path / "events.db")
    events = big_session(total=12_345)
    for start in range(0, len(events), 5_000):
        log.emit_batch(events[start : start + 5_000])
    auth = AuthServer(MemoryBackend(), log, lambda: START, AuthSettings("paging", "127.0.0.1:3080"))
    admin = Identity(username="admin", kind=KIND_ADMIN)
    read: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = auth.audit.session_events(admin, "big-session", cursor)
        assert len(page.events) <= PAGE_LIMIT
        read += page.events
        cursor = page.next
        if cursor is None:
            break
    assert [e["ei"] for e in read] == list(range(12_345))
    page = auth.audit.search(admin, sid="big-session", limit=1_000_000)  # capped per page, with a cursor
    assert len(page.events) == PAGE_LIMIT and page.next is not None
    log.close()


def test_an_access_user_pages_only_their_own_sessions() -> None:
    from common.errors import NotFound
    from common.identity import Identity
    from pteleport.auth.context import AuthSettings
    from pteleport.auth.server import AuthServer
    from pteleport.storage.memory import MemoryBackend

    log = MemoryAuditLog()
    log.emit_batch(big_session("alices", total=30))
    auth = AuthServer(MemoryBackend(), log, lambda: START, AuthSettings("paging", "127.0.0.1:3080"))
    auth.init_cluster()
    alice = Identity(username="alice", roles=("access",))
    bob = Identity(username="bob", roles=("access",))
    assert len(auth.audit.session_events(alice, "alices").events) == 30
    with pytest.raises(NotFound, match='no session "alices" found'):
        auth.audit.session_events(bob, "alices")


# --- real processes ----------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def seeded_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """A cluster whose audit log already holds the big session (written before it starts)."""
    data = tmp_path / "data"
    extra: list[str] = []
    if request.param == "sqlite":
        seed(SQLiteAuditLog(data / "log" / "events.db"), big_session())
    else:
        from pteleport.audit.postgres_log import PostgresAuditLog

        pg = request.getfixturevalue("pg")
        dbname = f"paging_{uuid.uuid4().hex[:12]}"
        pg.execute(f'CREATE DATABASE "{dbname}"')
        dsn = pg.superuser_dsn(dbname)
        seed(PostgresAuditLog(dsn), big_session())
        config = tmp_path / "pteleport.yaml"
        config.write_text(f"teleport:\n  storage:\n    type: postgresql\n    conn_string: {json.dumps(dsn)}\n")
        extra = ["-c", str(config)]
    cluster = Cluster(data, extra_args=extra).start()
    try:
        yield cluster
    finally:
        cluster.stop(check=False)


@pytest.mark.slow
def test_pctl_and_ptsh_read_every_event(seeded_cluster: Cluster, tmp_path: Path) -> None:
    env = seeded_cluster.env()
    everything = run([PCTL, "audit", "events", "--sid=big-session", "--limit=1000000", "--format=jsonl"], env)
    assert everything.returncode == 0, everything.stderr
    lines = everything.stdout.splitlines()
    assert len(lines) == TOTAL
    assert [json.loads(line)["ei"] for line in lines] == list(range(TOTAL))  # by time, ties by arrival
    assert everything.stderr == ""  # nothing was cut, so nothing to say

    queries = run(
        [PCTL, "audit", "events", "--sid=big-session", "--type=db.session.query", "--limit=1000000", "-f", "json"],
        env,
    )
    assert queries.returncode == 0, queries.stderr
    assert len(json.loads(queries.stdout)) == TOTAL - 2

    cut = run([PCTL, "audit", "events", "--sid=big-session", "--limit=25000", "--format=jsonl"], env)
    assert cut.returncode == 0 and len(cut.stdout.splitlines()) == 25_000
    assert cut.stderr.count("\n") == 1 and "showed the first 25000 matching events; more match" in cut.stderr

    exact = run([PCTL, "audit", "events", "--sid=big-session", f"--limit={TOTAL}", "--format=jsonl"], env)
    assert len(exact.stdout.splitlines()) == TOTAL and exact.stderr == ""

    # ptsh play of the whole session (> 10,000 events), as an auditor with an identity file.
    assert run([PCTL, "users", "add", "ann", "--roles=auditor"], env).returncode == 0
    identity = tmp_path / "ann.identity"
    signed = run([PCTL, "auth", "sign", "--user=ann", f"--out={identity}"], env)
    assert signed.returncode == 0, signed.stderr
    user_env = base_env(PTSH_HOME=tmp_path / "ann-home", PTELEPORT_DATA_DIR=tmp_path / "none")
    played = run([PTSH, "-i", str(identity), "play", "big-session", "--format=json"], user_env)
    assert played.returncode == 0, played.stderr
    assert [e["ei"] for e in json.loads(played.stdout)] == list(range(TOTAL))
    transcript = run([PTSH, "-i", str(identity), "play", "big-session"], user_env)
    assert transcript.stdout.count("=> select ") == TOTAL - 2
    assert "Session ended at" in transcript.stdout


@pytest.mark.slow
def test_recordings_ls_says_when_its_limit_hides_sessions(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log = SQLiteAuditLog(data / "log" / "events.db")
    now = datetime.now(UTC)
    for n in range(3):
        events = big_session(f"s{n}", total=3)
        for e in events:
            e["time"] = ev.format_time(now - timedelta(minutes=10 - n))
        log.emit_batch(events)
    log.close()
    with Cluster(data) as cluster:
        env = cluster.env()
        assert run([PCTL, "users", "add", "ann", "--roles=auditor"], env).returncode == 0
        identity = tmp_path / "ann.identity"
        assert run([PCTL, "auth", "sign", "--user=ann", f"--out={identity}"], env).returncode == 0
        user_env = base_env(PTSH_HOME=tmp_path / "ann-home", PTELEPORT_DATA_DIR=tmp_path / "none")
        two = run([PTSH, "-i", str(identity), "recordings", "ls", "--limit=2", "--format=json"], user_env)
        assert two.returncode == 0, two.stderr
        assert [e["sid"] for e in json.loads(two.stdout)] == ["s2", "s1"]
        assert "showed the 2 most recent sessions; there are more" in two.stderr
        three = run([PTSH, "-i", str(identity), "recordings", "ls", "--limit=3", "--format=json"], user_env)
        assert len(json.loads(three.stdout)) == 3 and three.stderr == ""
