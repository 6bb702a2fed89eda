"""Two auth/proxy processes sharing one PostgreSQL backend act as one cluster (HA)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from tests.harness import PCTL, Cluster, run
from tests.pgserver import PgServer

pytestmark = pytest.mark.slow


def test_two_processes_share_cas_users_and_tokens(pg, tmp_path: Path) -> None:
    pg.execute("DROP DATABASE IF EXISTS pteleport_ha")
    pg.execute("CREATE DATABASE pteleport_ha")
    dsn = pg.superuser_dsn("pteleport_ha")
    clusters = []
    try:
        for name in ("a", "b"):
            config = tmp_path / f"{name}.yaml"
            config.write_text(
                "teleport:\n"
                f"  data_dir: {tmp_path / name}\n"
                "  storage:\n"
                "    type: postgresql\n"
                f"    conn_string: {json.dumps(dsn)}\n"
                "auth_service:\n"
                "  cluster_name: ha.example.com\n"
            )
            clusters.append(Cluster(tmp_path / name, extra_args=["-c", str(config)]).start())
        a, b = clusters
        status = [json.loads(run([PCTL, "status", "--format=json"], c.env()).stdout) for c in clusters]
        assert status[0]["ca_pin"] == status[1]["ca_pin"]
        assert status[0]["cluster_name"] == "ha.example.com"
        token = run([PCTL, "tokens", "add", "--type=db", "--format=text"], a.env()).stdout.strip()
        listed = json.loads(run([PCTL, "tokens", "ls", "--format=json"], b.env()).stdout)
        assert hashlib.sha256(token.encode()).hexdigest()[:16] in [t["metadata"]["name"] for t in listed]
        assert run([PCTL, "users", "add", "zoe", "--roles=access"], b.env()).returncode == 0
        users = json.loads(run([PCTL, "get", "users", "--format=json"], a.env()).stdout)
        assert "zoe" in [u["metadata"]["name"] for u in users]
        a.restart()
        again = json.loads(run([PCTL, "status", "--format=json"], a.env()).stdout)
        assert again["ca_pin"] == status[0]["ca_pin"]
    finally:
        for cluster in clusters:
            cluster.stop(check=False)


def _ha_pair(server: PgServer, tmp_path: Path, dbname: str) -> list[Cluster]:
    server.execute(f"CREATE DATABASE {dbname}")
    dsn = server.superuser_dsn(dbname)
    clusters = []
    for name in ("a", "b"):
        config = tmp_path / f"{name}.yaml"
        config.write_text(
            "teleport:\n"
            f"  data_dir: {tmp_path / name}\n"
            "  storage:\n"
            "    type: postgresql\n"
            f"    conn_string: {json.dumps(dsn)}\n"
            "auth_service:\n"
            "  cluster_name: ha.example.com\n"
        )
        clusters.append(Cluster(tmp_path / name, extra_args=["-c", str(config)]).start())
    return clusters


def _storage_lines(log: str) -> dict[str, tuple[int, int]]:
    """(lost, back) lines about the state storage connection, per process."""
    counts = {}
    for process, tag in (("proxy", "[pteleport.storage]"), ("auth worker", "[pteleport.storage, auth worker]")):
        lines = [line for line in log.splitlines() if tag in line]
        lost = sum("lost the connection to the PostgreSQL storage database" in line for line in lines)
        back = sum("connection to the PostgreSQL storage database is back" in line for line in lines)
        counts[process] = (lost, back)
    return counts


def _until_tokens_add_works(cluster: Cluster, deadline: float) -> None:
    while True:
        result = run([PCTL, "tokens", "add", "--type=db", "--format=text"], cluster.env())
        if result.returncode == 0:
            return
        assert time.monotonic() < deadline, f"{cluster.addr} did not recover: {result.stderr}\n{cluster.log()}"
        time.sleep(0.2)


def test_both_processes_recover_by_themselves_after_the_backend_restarts(tmp_path: Path) -> None:
    """The PostgreSQL backend of an HA pair restarts: both processes reconnect on their own,
    each logs one line when it lost storage and one when it is back, and nothing is lost."""
    server = PgServer.start(tmp_path)
    clusters: list[Cluster] = []
    try:
        clusters = _ha_pair(server, tmp_path, "pteleport_restart")
        a, b = clusters
        assert run([PCTL, "users", "add", "before", "--roles=access"], a.env()).returncode == 0
        server.pause()
        down = run([PCTL, "tokens", "add", "--type=db"], b.env())
        assert down.returncode == 5, down.stderr
        assert "PostgreSQL storage database" in down.stderr and "try again" in down.stderr
        assert "Traceback" not in down.stderr
        server.resume()
        deadline = time.monotonic() + 30
        for cluster in clusters:
            _until_tokens_add_works(cluster, deadline)
        # A plain restart, with no call during the outage, heals on the next call.
        server.restart()
        for cluster in clusters:
            _until_tokens_add_works(cluster, time.monotonic() + 30)
        users = json.loads(run([PCTL, "get", "users", "--format=json"], b.env()).stdout)
        assert "before" in [u["metadata"]["name"] for u in users]
        # Each cluster is two processes (the proxy, and the auth service's worker), each with its
        # own connection: each says once that it lost it and once that it is back, per outage.
        for cluster in clusters:
            deadline = time.monotonic() + 15
            while True:
                counts = _storage_lines(cluster.log())
                if counts == {"proxy": (2, 2), "auth worker": (2, 2)} or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert counts == {"proxy": (2, 2), "auth worker": (2, 2)}, cluster.log()
            assert "Traceback" not in cluster.log()
    finally:
        for cluster in clusters:
            cluster.stop(check=False)
        server.stop()
