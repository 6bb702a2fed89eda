"""Wire fidelity (issue 10): through `ptsh proxy db --tunnel` a client sees what it sees connected directly.

Each behaviour is checked side by side against the same real PostgreSQL: directly (TLS with a
client certificate from a CA the server trusts) and through the tunnel (plain text on
127.0.0.1, mTLS to the proxy, the reverse tunnel, the agent's TLS to PostgreSQL).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from tests.dbenv import DbEnv, make_env
from tests.pgserver import ThrowawayCA

pytestmark = pytest.mark.slow
LIMITED = """kind: role
version: v7
metadata:
  name: only-alice-postgres
spec:
  allow:
    db_labels: {'*': '*'}
    db_users: [alice]
    db_names: [postgres]
"""


class Direct:
    """Connections straight to PostgreSQL, with client certificates from a CA it trusts."""

    def __init__(self, pg, root: Path) -> None:  # type: ignore[no-untyped-def]
        self.pg = pg
        self.root = root
        self.ca = ThrowawayCA.create("direct clients CA")
        pg.trust_client_ca(self.ca.cert_pem)

    def files(self, user: str) -> tuple[str, str]:
        cert, key = self.ca.issue(user)
        cert_file, key_file = self.root / f"{user}.crt", self.root / f"{user}.key"
        cert_file.write_bytes(cert)
        key_file.write_bytes(key)
        key_file.chmod(0o600)
        return str(cert_file), str(key_file)

    def dsn(self, user: str, dbname: str = "postgres") -> str:
        cert, key = self.files(user)
        return self.pg.dsn(user, dbname, sslcert=cert, sslkey=key)


@pytest.fixture(scope="module")
def env(pg, tmp_path_factory) -> Iterator[DbEnv]:
    for name in ("alice", "other_user"):
        pg.create_role(name, "cert")
    if not pg.execute("select 1 from pg_database where datname = 'bench'"):
        pg.execute("create database bench")
    e = make_env(tmp_path_factory.mktemp("fidelity"), pg)
    e.start_agent("aurora")
    e.add_user("alice", "access,db")
    e.login("alice")
    assert e.pctl("create", input=LIMITED).returncode == 0
    e.add_user("lim", "only-alice-postgres")
    e.login("lim")
    try:
        yield e
    finally:
        e.stop()


@pytest.fixture(scope="module")
def direct(pg, tmp_path_factory) -> Direct:
    return Direct(pg, tmp_path_factory.mktemp("direct"))


def tunnel(env: DbEnv, user: str = "alice") -> contextlib.AbstractContextManager[int]:
    """``ptsh proxy db --tunnel`` routed to alice@postgres; yields its port."""
    return env.tunnel(user)


def via(port: int, user: str = "alice", dbname: str = "postgres", **extra: str) -> str:
    """A conninfo through the tunnel (libpq always sends a user and a database: its OS user by default)."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo(host="127.0.0.1", port=str(port), sslmode="disable", user=user, dbname=dbname, **extra)


def who(dsn: str) -> tuple[str, str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("select current_database(), current_user").fetchone()
    assert row is not None
    return row[0], row[1]


def connect_error(dsn: str) -> str:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(dsn, autocommit=True)
    return str(info.value).rsplit("failed: ", 1)[-1].strip()


@pytest.fixture(scope="module")
def port(env: DbEnv) -> Iterator[int]:
    with tunnel(env) as p:
        yield p


# --- 1. the client's database and user -------------------------------------------------------
def test_the_clients_database_and_user_are_used_and_the_route_is_the_default(env, direct, port) -> None:
    assert who(via(port)) == ("postgres", "alice")
    for user, dbname in (("alice", "bench"), ("other_user", "postgres"), ("other_user", "bench")):
        assert who(via(port, user, dbname)) == who(direct.dsn(user, dbname)) == (dbname, user)
    psql = subprocess.run(
        ["psql", via(port, dbname="bench"), "-At", "-c", "select current_database()"],
        capture_output=True, text=True, timeout=30,
    )
    assert psql.stdout.strip() == "bench", psql.stderr
    # A client that names no database gets the certificate's (libpq always names one, so raw).
    sock = raw_session(port, b"user\x00other_user\x00\x00")
    sock.sendall(b"Q" + struct.pack("!i", 4 + 32) + b"select current_database()::text\x00")
    reply = until_closed_or(sock, b"Z\x00\x00\x00\x05")
    sock.close()
    assert b"postgres" in reply and b"other_user" not in reply.split(b"D", 1)[-1]


def test_a_database_that_does_not_exist_gets_the_servers_own_error(env, direct, port) -> None:
    through = connect_error(via(port, "alice", "no_such_db"))
    assert through == connect_error(direct.dsn("alice", "no_such_db"))
    assert 'database "no_such_db" does not exist' in through


def test_a_refused_db_user_or_name_says_what_the_roles_allow(env) -> None:
    with tunnel(env, "lim") as p:
        assert who(via(p)) == ("postgres", "alice")
        refused = connect_error(via(p, "other_user", "postgres"))
        assert 'db user "other_user"' in refused and "alice" in refused, refused
        refused = connect_error(via(p, "alice", "bench"))
        assert 'db name "bench"' in refused and "postgres" in refused, refused


def test_startup_parameters_reach_the_server_and_application_name_is_audited(env, port) -> None:
    marker = f"fidelity-{time.time_ns()}"
    dsn = via(port, application_name=marker, options="-c search_path=pg_catalog,public -c DateStyle=SQL")
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("select current_setting('application_name'), current_setting('datestyle')").fetchone()
        assert row == (marker, "SQL, MDY")
        conn.execute(f"select '{marker}'")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        queries = [e for e in env.events(type="db.session.query") if marker in e.get("db_query", "")]
        if queries:
            break
        time.sleep(0.2)
    assert queries and queries[0]["user_agent"] == marker
    assert (queries[0]["db_user"], queries[0]["db_name"]) == ("alice", "postgres")


def test_audit_events_carry_the_db_user_and_name_actually_used(env, port) -> None:
    marker = f"used-{time.time_ns()}"
    with psycopg.connect(via(port, "other_user", "bench"), autocommit=True) as conn:
        conn.execute(f"select '{marker}'")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        queries = [e for e in env.events(type="db.session.query") if marker in e.get("db_query", "")]
        if queries:
            break
        time.sleep(0.2)
    assert queries and (queries[0]["db_user"], queries[0]["db_name"]) == ("other_user", "bench")
    start = env.events(sid=queries[0]["sid"])[0]
    assert start["event"] == "db.session.start" and (start["db_user"], start["db_name"]) == ("other_user", "bench")


# --- 2. the server's BackendKeyData -------------------------------------------------------------
def test_the_driver_reports_the_servers_backend_pid(env, direct, port) -> None:
    for dsn in (direct.dsn("alice"), via(port)):
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("select pg_backend_pid()").fetchone() == (conn.info.backend_pid,)


def test_notify_carries_the_pid_of_the_notifying_connection(env, port) -> None:
    with psycopg.connect(via(port), autocommit=True) as listener, psycopg.connect(via(port), autocommit=True) as sender:
        listener.execute("listen fidelity")
        sender.execute("notify fidelity, 'hello'")
        note = next(listener.notifies(timeout=10))
        assert (note.channel, note.payload, note.pid) == ("fidelity", "hello", sender.info.backend_pid)


def test_pg_terminate_backend_of_the_reported_pid_terminates_that_session(env, port) -> None:
    with psycopg.connect(via(port), autocommit=True) as victim, psycopg.connect(via(port), autocommit=True) as killer:
        assert killer.execute("select pg_terminate_backend(%s)", [victim.info.backend_pid]).fetchone() == (True,)
        with pytest.raises(psycopg.OperationalError):
            victim.execute("select 1")


def test_cancel_reaches_the_agent_that_holds_the_session(env, port) -> None:
    env.start_agent("aurora")  # a second agent serves aurora too
    try:
        env.wait_for_servers("aurora", count=2)
        for _ in range(4):  # sessions land on either agent; every cancel must work
            with psycopg.connect(via(port), autocommit=True) as conn:
                started = time.monotonic()
                timer = threading.Timer(0.5, conn.cancel_safe)
                timer.start()
                with pytest.raises(psycopg.errors.QueryCanceled):
                    conn.execute("select pg_sleep(20)")
                timer.join()
                assert time.monotonic() - started < 10
    finally:
        env.agents[-1].stop()
        env.agents.pop()


# --- 3. a session killed server-side looks killed ---------------------------------------------------
def test_terminating_ones_own_backend_raises_what_it_raises_directly(env, direct, port) -> None:
    outcomes = []
    for dsn in (direct.dsn("alice"), via(port)):
        conn = psycopg.connect(dsn, autocommit=True)
        with pytest.raises(psycopg.OperationalError) as info:
            conn.execute("select pg_terminate_backend(pg_backend_pid())")
        outcomes.append((type(info.value), info.value.sqlstate, str(info.value).splitlines()[0]))
        assert conn.closed or conn.broken
        conn.close()
    assert outcomes[0] == outcomes[1], outcomes
    assert outcomes[0][0] is psycopg.errors.AdminShutdown


# --- 4. aborting a large COPY ----------------------------------------------------------------------
def copy_abort_status(dsn: str) -> TransactionStatus:
    with psycopg.connect(dsn) as conn:
        cur = conn.cursor()
        with contextlib.suppress(psycopg.errors.QueryCanceled), cur.copy(
            "copy (select generate_series(1, 1000000)) to stdout"
        ) as copy:
            assert copy.read()  # one row
            time.sleep(0.5)  # by now every buffer on the way is full, or the server is done
            conn.cancel_safe()
            for _ in copy:
                pass
        status = conn.info.transaction_status
        conn.rollback()
        return status


def test_cancelling_a_large_copy_stops_the_server_while_it_sends(env, direct, port) -> None:
    """With every hop's buffers at their autotuned megabytes, the server had finished (INTRANS)."""
    assert copy_abort_status(direct.dsn("alice")) == TransactionStatus.INERROR
    assert copy_abort_status(via(port)) == TransactionStatus.INERROR


# --- 5. malformed client input -----------------------------------------------------------------
def raw_session(port: int, body: bytes = b"user\x00alice\x00database\x00postgres\x00\x00") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(struct.pack("!ii", 8 + len(body), 196608) + body)
    greeting = b""
    while b"Z\x00\x00\x00\x05I" not in greeting:
        chunk = sock.recv(65536)
        assert chunk, greeting
        greeting += chunk
    return sock


def until_closed(sock: socket.socket | ssl.SSLSocket) -> bytes:
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def until_closed_or(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    with contextlib.suppress(OSError):
        while marker not in data and (chunk := sock.recv(65536)):
            data += chunk
    return data


def sqlstate_of(reply: bytes) -> str | None:
    start = reply.find(b"E")
    if start < 0:
        return None
    fields = reply[start + 5 :]
    code = fields.find(b"C")
    return fields[code + 1 : code + 6].decode() if code >= 0 else None


@pytest.mark.parametrize(
    "message",
    [
        b"Q" + struct.pack("!i", 4 + 18) + b"select 1\x00garbage\x00",  # an embedded NUL
        b"E" + struct.pack("!i", 4 + 1) + b"\x00",  # Execute without its row limit
    ],
    ids=["query-with-nul", "truncated-execute"],
)
def test_malformed_messages_get_a_protocol_violation_then_eof(env, port, message: bytes) -> None:
    sock = raw_session(port)
    sock.sendall(message + b"S\x00\x00\x00\x04")
    reply = until_closed(sock)
    sock.close()
    assert sqlstate_of(reply) == "08P01", reply
    assert b"SFATAL" in reply
    # The next client is unaffected.
    assert who(via(port)) == ("postgres", "alice")
