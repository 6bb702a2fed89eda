"""Trust on the data path, end to end (issue 9): what agents may serve, and revocation at every hop.

Real processes: the daemon, `pteleport db start` agents (the real one and rogues holding valid
db join tokens), PostgreSQL, psql, psycopg through `ptsh proxy db --tunnel`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from tests.dbenv import DbEnv, make_env

pytestmark = pytest.mark.slow

REAL_SCOPE = ("--db-name=aurora",)


class CountingListener:
    """A TCP port that only counts who connects (the 'database' behind a rogue agent)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def env(pg, tmp_path_factory) -> Iterator[DbEnv]:
    for name in ("alice", "bob", "carol", "dave", "erin"):
        pg.create_role(name, "cert")
    e = make_env(tmp_path_factory.mktemp("trust"), pg)
    e.start_agent("aurora", token_args=REAL_SCOPE)
    e.add_user("alice", "access,db")
    e.login("alice")
    try:
        yield e
    finally:
        e.stop()


def registrations(env: DbEnv, name: str) -> list[dict]:
    return [s for s in env.pctl_json("get", "db_servers") if s["metadata"]["name"] == name]


def wait_log(agent, text: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in agent.log():
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in the agent's log:\n{agent.log()}")


def test_rogue_agents_with_valid_tokens_receive_no_session(env: DbEnv) -> None:
    [real] = registrations(env, "aurora")
    listener = CountingListener()
    try:
        other_scope = env.start_agent(
            "aurora", wait=False, token_args=("--db-name=other",), uri=f"127.0.0.1:{listener.port}"
        )
        unscoped = env.start_agent("aurora", wait=False, uri=f"127.0.0.1:{listener.port}")
        for rogue in (other_scope, unscoped):
            rogue.wait_connected()
            wait_log(rogue, "auth refused to register database aurora")
        assert "outside this database service's scope" in other_scope.log()
        assert "reserved" in unscoped.log()
        for i in range(12):  # every session reaches the real database, none the rogues
            result = env.ptsh(
                "alice", "db", "connect", "--db-user=alice", "--db-name=postgres", "aurora",
                "--", "-At", "-c", f"select {i}, inet_server_port()",
            )
            assert result.returncode == 0, result.stderr
            assert result.stdout.strip() == f"{i}|{env.pg.port}"
        assert listener.connections == 0
        assert [s["spec"]["host_id"] for s in registrations(env, "aurora")] == [real["spec"]["host_id"]]
        listing = env.pctl("db", "ls")
        assert real["spec"]["host_id"] in listing.stdout and "aurora" in listing.stdout
        refused = [e for e in env.events(type="db_server.create") if e["code"] == "PDS00W"]
        assert {e["host_id"] for e in refused} >= {_host_id(r) for r in (other_scope, unscoped)}
    finally:
        for rogue in env.agents[1:]:
            rogue.stop()
        del env.agents[1:]
        listener.close()


def _host_id(agent) -> str:  # type: ignore[no-untyped-def]
    from common.identity import identity_from_pem
    from common.identity_file import load

    return identity_from_pem(load(agent.data_dir / "host-identity.pem").cert).username


def test_a_join_that_claims_an_existing_host_id_is_refused(env: DbEnv) -> None:
    from common.tls import generate_private_key, public_key_pem

    host_id = registrations(env, "aurora")[0]["spec"]["host_id"]
    token = env.pctl("tokens", "add", "--type=db", "--format=text").stdout.strip()
    body = {
        "token": token,
        "role": "Db",
        "host_id": host_id,
        "hostname": "impostor",
        "public_key": public_key_pem(generate_private_key()).decode(),
    }
    answer = httpx.post(f"{env.cluster.url}/v1/join", json=body, verify=False, timeout=10)
    assert answer.status_code == 403
    assert "belongs to another host" in answer.json()["error"]["message"]
    # The real agent is undisturbed.
    assert registrations(env, "aurora")[0]["spec"]["host_id"] == host_id
    ok = env.ptsh("alice", "db", "connect", "--db-user=alice", "--db-name=postgres", "aurora", "--", "-Atc", "select 1")
    assert ok.returncode == 0, ok.stderr


@contextlib.contextmanager
def tunnel(env: DbEnv, user: str) -> Iterator[str]:
    """``ptsh proxy db --tunnel`` for ``user``; yields a psycopg DSN through it."""
    with env.tunnel(user, db_user=user) as port:
        yield f"postgresql://{user}@127.0.0.1:{port}/postgres?sslmode=disable&connect_timeout=10"


def ends_within(conn: psycopg.Connection, seconds: float) -> psycopg.Error:
    """Poll the open session until the agent ends it; the error the driver raised."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            conn.execute("select 1").fetchone()
        except psycopg.Error as exc:
            return exc
        time.sleep(0.2)
    raise AssertionError(f"the session was still open after {seconds}s")


def refused_new(dsn: str) -> str:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(dsn, autocommit=True)
    return str(info.value)


def test_a_lock_ends_open_sessions_and_refuses_new_ones_until_removed(env: DbEnv) -> None:
    env.add_user("bob", "access,db")
    env.login("bob")
    with tunnel(env, "bob") as dsn:
        idle = psycopg.connect(dsn, autocommit=True)
        busy = psycopg.connect(dsn, autocommit=True)
        assert idle.execute("select current_user").fetchone() == ("bob",)
        outcome: list[BaseException] = []

        def sleep() -> None:
            try:
                busy.execute("select pg_sleep(30)")
            except BaseException as exc:
                outcome.append(exc)

        runner = threading.Thread(target=sleep)
        runner.start()
        time.sleep(0.5)
        locked = env.pctl("lock", "--user=bob", "--message=incident 42", "--ttl=1h")
        assert locked.returncode == 0, locked.stderr
        err = ends_within(idle, 5)
        assert isinstance(err, psycopg.errors.AdminShutdown), repr(err)
        assert 'access is locked for user "bob": incident 42' in str(err)
        runner.join(5)
        assert outcome and isinstance(outcome[0], psycopg.errors.AdminShutdown), outcome
        assert "incident 42" in str(outcome[0])  # the query in flight ended with our message
        assert "incident 42" in refused_new(dsn)  # the tunnel's certificate is refused at once
        lock_id = env.pctl_json("locks", "ls")[0]["metadata"]["name"]
        assert env.pctl("locks", "rm", lock_id).returncode == 0
        deadline = time.monotonic() + 5
        while True:
            try:
                with psycopg.connect(dsn, autocommit=True) as again:
                    assert again.execute("select 1").fetchone() == (1,)
                break
            except psycopg.OperationalError:
                assert time.monotonic() < deadline, "still refused after the lock was removed"
                time.sleep(0.2)
    disconnects = [e for e in env.events(type="client.disconnect", user="bob")]
    assert len(disconnects) == 2 and all(e["code"] == "T3006I" and "incident 42" in e["reason"] for e in disconnects)
    assert [e["code"] for e in env.events(type="lock.created")][-1] == "TLK00I"
    assert env.events(type="lock.deleted")[-1]["name"] == lock_id


def test_deleting_a_user_ends_their_sessions(env: DbEnv) -> None:
    env.add_user("carol", "access,db")
    env.login("carol")
    with tunnel(env, "carol") as dsn:
        conn = psycopg.connect(dsn, autocommit=True)
        assert conn.execute("select current_user").fetchone() == ("carol",)
        assert env.pctl("users", "rm", "carol").returncode == 0
        err = ends_within(conn, 5)
        assert 'user "carol" was deleted' in str(err)
        assert "carol" in refused_new(dsn)
    assert any(d["spec"]["target"] == {"user": "carol"} for d in env.pctl_json("locks", "ls"))


def test_taking_a_role_away_ends_sessions_that_relied_on_it(env: DbEnv) -> None:
    env.add_user("dave", "access,db")
    env.login("dave")
    with tunnel(env, "dave") as dsn:
        conn = psycopg.connect(dsn, autocommit=True)
        assert conn.execute("select current_user").fetchone() == ("dave",)
        assert env.pctl("users", "update", "dave", "--set-roles=access").returncode == 0
        err = ends_within(conn, 5)
        assert 'role "db" was taken from user "dave"' in str(err) and "log in again" in str(err)
        assert "was taken" in refused_new(dsn)


def test_disconnect_expired_cert_ends_the_session_when_the_certificate_expires(env: DbEnv) -> None:
    role = """kind: role
version: v7
metadata:
  name: short-lived
spec:
  options:
    disconnect_expired_cert: true
  allow:
    db_labels: {'*': '*'}
    db_users: [erin]
    db_names: [postgres]
"""
    assert env.pctl("create", input=role).returncode == 0
    env.add_user("erin", "short-lived")
    env.login("erin", "--ttl=8s")
    result = env.ptsh("erin", "db", "connect", "aurora", "--", "-At", "-c", "select pg_sleep(30)", timeout=40)
    assert result.returncode != 0
    assert "your certificate expired" in result.stderr and "log in again" in result.stderr, result.stderr
    ends = [e for e in env.events(type="client.disconnect", user="erin")]
    assert ends and "certificate expired" in ends[0]["reason"]
