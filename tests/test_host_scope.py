"""Which databases a joined agent may register (auth: tokens, hosts, heartbeats), in memory.

Auth assigns host ids at join and binds the token's scope to the host; a heartbeat registers
only what the scope and the reservations allow. The proxy routes only to registrations.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from common.errors import AccessDenied, BadParameter
from common.identity import KIND_ADMIN, Identity, identity_from_pem
from common.tls import generate_private_key, public_key_pem
from pteleport.audit.memory_log import MemoryAuditLog
from pteleport.auth.context import AuthSettings
from pteleport.auth.server import AuthServer
from pteleport.storage.memory import MemoryBackend

ADMIN = Identity(username="admin", kind=KIND_ADMIN)
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def auth() -> AuthServer:
    server = AuthServer(MemoryBackend(clock=lambda: NOW), MemoryAuditLog(), lambda: NOW, AuthSettings("t", "x:3080"))
    server.init_cluster()
    return server


def join(auth: AuthServer, **scope: object) -> Identity:
    doc = auth.tokens.add(ADMIN, ["db"], None, None, scope.get("labels"), scope.get("db_names"))  # type: ignore[arg-type]
    token = doc["metadata"]["name"]
    key = public_key_pem(generate_private_key()).decode()
    cert, host_id = auth.tokens.join(token, "Db", None, "agent", key, "10.0.0.1:1")
    identity = identity_from_pem(cert)
    assert identity.username == host_id
    return identity


def db(name: str, **labels: str) -> dict:
    return {
        "kind": "db",
        "version": "v3",
        "metadata": {"name": name, "labels": {"teleport.dev/origin": "config", **labels}},
        "spec": {"protocol": "postgres", "uri": "localhost:5432"},
    }


def events(auth: AuthServer, name: str) -> list[dict]:
    return [e for e in auth.ctx.audit.search(limit=10_000) if e["event"] == name]


def test_auth_assigns_host_ids_and_refuses_a_claimed_one(auth: AuthServer) -> None:
    first, second = join(auth), join(auth)
    assert first.username != second.username
    token = auth.tokens.add(ADMIN, ["db"], None, None)["metadata"]["name"]
    key = public_key_pem(generate_private_key()).decode()
    with pytest.raises(AccessDenied, match="belongs to another host"):
        auth.tokens.join(token, "Db", first.username, "rogue", key, "10.0.0.9:1")
    with pytest.raises(AccessDenied, match="assigns host ids"):
        auth.tokens.join(token, "Db", "my-own-choice", "rogue", key, "10.0.0.9:1")
    failed = [e for e in events(auth, "instance.join") if e["code"] == "TJ002E"]
    assert [e.get("host_id") for e in failed] == [first.username, "my-own-choice"]


def test_the_token_scope_is_bound_into_the_host_certificate(auth: AuthServer) -> None:
    host = join(auth, db_names=["aurora"], labels={"env": "prod"})
    assert host.host_scope is not None
    assert host.host_scope.db_names == ("aurora",) and host.host_scope.labels == {"env": ["prod"]}
    assert join(auth).host_scope is None
    with pytest.raises(BadParameter, match="--type=db"):
        auth.tokens.add(ADMIN, ["node"], None, None, None, ["aurora"])


def test_a_scoped_host_registers_only_its_databases(auth: AuthServer) -> None:
    host = join(auth, db_names=["aurora"])
    refused = auth.databases.heartbeat(host, [db("aurora"), db("billing")], "agent")
    assert [r["name"] for r in refused] == ["billing"]
    assert "outside this database service's scope" in refused[0]["reason"] and "aurora" in refused[0]["reason"]
    assert auth.databases.registrations.hosts_for("aurora") == [host.username]
    assert auth.databases.registrations.hosts_for("billing") == []


def test_label_scopes_match_the_database_labels(auth: AuthServer) -> None:
    host = join(auth, labels={"env": "dev"})
    refused = auth.databases.heartbeat(host, [db("a", env="dev"), db("b", env="prod")], "agent")
    assert [r["name"] for r in refused] == ["b"] and "env=dev" in refused[0]["reason"]


def test_a_name_a_scope_names_is_reserved_for_that_scope(auth: AuthServer) -> None:
    real = join(auth, db_names=["aurora"])
    auth.databases.heartbeat(real, [db("aurora")], "real")
    other_scope = join(auth, db_names=["other"])
    unscoped = join(auth)
    assert auth.databases.heartbeat(other_scope, [db("aurora")], "rogue")[0]["name"] == "aurora"
    reason = auth.databases.heartbeat(unscoped, [db("aurora")], "rogue")[0]["reason"]
    assert "reserved" in reason and "--db-name=aurora" in reason
    assert auth.databases.registrations.hosts_for("aurora") == [real.username]
    # A second agent with a token naming aurora may serve it too (high availability).
    twin = join(auth, db_names=["aurora"])
    assert auth.databases.heartbeat(twin, [db("aurora")], "twin") == []
    assert sorted(auth.databases.registrations.hosts_for("aurora")) == sorted([real.username, twin.username])


def test_an_unscoped_host_cannot_join_a_database_a_label_scoped_host_serves(auth: AuthServer) -> None:
    scoped = join(auth, labels={"env": "prod"})
    assert auth.databases.heartbeat(scoped, [db("pay", env="prod")], "scoped") == []
    unscoped = join(auth)
    reason = auth.databases.heartbeat(unscoped, [db("pay", env="prod")], "rogue")[0]["reason"]
    assert "scoped join token" in reason
    # It may serve a database nobody scoped claims (Teleport's behaviour).
    assert auth.databases.heartbeat(unscoped, [db("scratch")], "rogue") == []


def test_first_registrations_and_refusals_are_audited_once(auth: AuthServer) -> None:
    host = join(auth, db_names=["aurora"])
    for _ in range(3):
        auth.databases.heartbeat(host, [db("aurora"), db("billing")], "agent")
    created = events(auth, "db_server.create")
    assert [(e["code"], e["name"]) for e in created] == [("PDS00W", "billing"), ("PDS00I", "aurora")] or [
        (e["code"], e["name"]) for e in created
    ] == [("PDS00I", "aurora"), ("PDS00W", "billing")]
    ok = next(e for e in created if e["code"] == "PDS00I")
    assert ok["host_id"] == host.username and ok["db_scope"] == {"db_names": ["aurora"], "db_labels": {}}


def test_a_proxy_identity_cannot_register_databases(auth: AuthServer) -> None:
    cert = auth.certs.sign_host("proxy-1", "Proxy", generate_private_key().public_key(), ["proxy"])
    with pytest.raises(AccessDenied, match="may not register databases"):
        auth.databases.heartbeat(identity_from_pem(cert), [db("aurora")], "proxy")
