"""Two auth+proxy processes on one PostgreSQL behind haproxy: every agent is reachable through every proxy.

Issue 13 measured 10 failures in 20 ``ptsh db connect`` runs through the load balancer:
the runs that landed on the proxy the agent had not dialled. Agents now keep a tunnel to
each registered proxy (the agent mesh), so every run works through either proxy.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.haenv import HaEnv, make_ha_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ha(pg, tmp_path_factory) -> Iterator[HaEnv]:
    root: Path = tmp_path_factory.mktemp("ha-mesh")
    pg.create_role("alice", "cert")
    env = make_ha_env(root, pg, "pteleport_ha_mesh")
    try:
        env.add_user("mia", "access,db")
        env.login("mia")
        env.start_agent("aurora")
        yield env
    finally:
        env.stop()


def select_one(env: HaEnv, user: str = "mia", database: str = "aurora", sql: str = "select 1"):
    return env.ptsh(user, "db", "connect", "--db-user=alice", "--db-name=postgres", database, "--", "-At", "-c", sql)


def test_twenty_connects_through_the_load_balancer_all_work(ha: HaEnv) -> None:
    """The measurement of issue 13: 20 runs through haproxy in front of two proxies."""
    ha.wait_mesh()
    results = [select_one(ha) for _ in range(20)]
    failed = [r.stderr for r in results if r.returncode != 0 or r.stdout.strip() != "1"]
    assert failed == [], f"{len(failed)} of 20 failed: {failed[:3]}\n{ha.logs()}"
