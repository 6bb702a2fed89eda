"""Two auth/proxy processes sharing one PostgreSQL backend act as one cluster (HA)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.harness import PCTL, Cluster, run

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
