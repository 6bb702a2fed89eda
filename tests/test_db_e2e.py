"""Database access end to end: agents, the reverse tunnel, the Postgres engine, ptsh db commands.

Real processes throughout: the daemon, `pteleport db start` agents, PostgreSQL, psql.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dbenv import PASSWORD, DbEnv, make_env
from tests.harness import PTSH, pty_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(pg, tmp_path_factory) -> Iterator[DbEnv]:
    pg.create_role("alice", "cert")
    pg.create_role("reader", "cert")
    e = make_env(tmp_path_factory.mktemp("db"), pg)
    e.start_agent("aurora")
    e.add_user("alice", "access,db")
    e.login("alice")
    try:
        yield e
    finally:
        e.stop()


def connect(env: DbEnv, user: str, *args: str, sql: str = "select current_user") -> subprocess.CompletedProcess[str]:
    return env.ptsh(user, "db", "connect", *args, "--", "-At", "-c", sql)


def test_db_ls_shows_allowed_users_and_labels(env: DbEnv) -> None:
    result = env.ptsh("alice", "db", "ls")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["Name", "Description", "Allowed", "Users", "Labels", "Connect"]
    assert re.match(r"aurora\s+\[\*\]\s+env=dev", lines[2]), result.stdout
    data = json.loads(env.ptsh("alice", "db", "ls", "--format=json").stdout)
    assert [d["metadata"]["name"] for d in data] == ["aurora"]
    assert data[0]["users"]["allowed"] == ["*"]
    assert env.ptsh("alice", "db", "ls", "env=prod", "--format=json").stdout.strip() == "[]"


def test_connect_runs_psql_as_the_routed_user_and_audits_the_query(env: DbEnv) -> None:
    marker = f"select 'audit-{time.time_ns()}'"
    result = connect(env, "alice", "--db-user=alice", "--db-name=postgres", "aurora", sql=marker)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("audit-")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        queries = [e for e in env.events(type="db.session.query") if e.get("db_query") == marker]
        if queries:
            break
        time.sleep(0.2)
    assert queries, "the query never reached the audit log"
    event = queries[0]
    assert event["code"] == "TDB02I"
    assert (event["user"], event["db_user"], event["db_name"], event["db_service"]) == (
        "alice",
        "alice",
        "postgres",
        "aurora",
    )
    session = env.events(sid=event["sid"])
    assert session[0]["event"] == "db.session.start"
    assert [e["ei"] for e in session] == list(range(len(session)))


def test_psql_exit_code_is_returned(env: DbEnv) -> None:
    result = connect(env, "alice", "--db-user=alice", "--db-name=postgres", "aurora", sql="select 1/0")
    assert result.returncode == 1
    assert "division by zero" in result.stderr


def test_extended_protocol_parameters_are_audited(env: DbEnv) -> None:
    """psycopg sends Parse/Bind/Execute with text and binary parameters; the agent records them."""
    import base64

    import psycopg

    with open_tunnel(env, "alice") as port:
        dsn = f"postgresql://alice@127.0.0.1:{port}/postgres?sslmode=disable"
        with psycopg.connect(dsn, prepare_threshold=0) as conn:
            row = conn.execute("select %t::text, %b::int4", ["bound-value", 42]).fetchone()
    assert row == ("bound-value", 42)
    deadline = time.monotonic() + 10
    binds: list[dict] = []
    while time.monotonic() < deadline and not binds:
        binds = [
            e
            for e in env.events(type="db.session.postgres.statements.bind")
            if e.get("parameters", [None])[0] == "bound-value"
        ]
        time.sleep(0.2)
    assert binds and binds[0]["code"] == "TPG01I"
    # The integer went in binary: audited as base64 of its bytes (Teleport's rule).
    assert int.from_bytes(base64.b64decode(binds[0]["parameters"][1]), "big") == 42
    session = env.events(sid=binds[0]["sid"])
    parses = [e for e in session if e["event"] == "db.session.postgres.statements.parse"]
    assert "$1::text" in parses[0]["query"] and parses[0]["code"] == "TPG00I"
    assert any(e["event"] == "db.session.postgres.statements.execute" for e in session)


def open_tunnel(env: DbEnv, user: str, db_user: str = "alice") -> contextlib.AbstractContextManager[int]:
    return env.tunnel(user, db_user=db_user)


def test_role_refusal_names_what_would_be_allowed(env: DbEnv, pg) -> None:
    limited = """kind: role
version: v7
metadata:
  name: readonly
spec:
  allow:
    db_labels:
      env: dev
    db_users: [reader]
    db_names: [postgres]
"""
    assert env.pctl("create", input=limited).returncode == 0
    env.add_user("bob", "readonly")
    env.login("bob")
    refused = connect(env, "bob", "--db-user=alice", "--db-name=postgres", "aurora")
    assert refused.returncode == 4, refused.stderr
    assert "reader" in refused.stderr and '"alice"' in refused.stderr
    # One allowed db user and db name: they are the defaults.
    ok = connect(env, "bob", "aurora")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "reader"
    denied = [e for e in env.events(type="db.session.start", user="bob") if e["code"] == "TDB00W"]
    assert denied and not denied[0]["success"]


def test_agent_rechecks_rbac_when_roles_change_after_login(env: DbEnv) -> None:
    assert env.ptsh("bob", "db", "login", "aurora").returncode == 0
    deny = """kind: role
version: v7
metadata:
  name: readonly
spec:
  allow:
    db_labels:
      env: dev
    db_users: [reader]
    db_names: [postgres]
  deny:
    db_labels:
      env: dev
"""
    assert env.pctl("create", "-f", input=deny).returncode == 0
    # The proxy tells the agent that roles changed; it also re-reads them every few seconds.
    deadline = time.monotonic() + 30
    result = connect(env, "bob", "aurora")
    while result.returncode == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
        result = connect(env, "bob", "aurora")
    assert result.returncode != 0
    assert "denied" in result.stderr
    refusals = [e for e in env.events(type="db.session.start", user="bob") if e["code"] == "TDB00W"]
    assert any(e.get("db_service") == "aurora" and e.get("server_id") for e in refusals)


def test_ctrl_c_in_psql_cancels_the_running_query(env: DbEnv) -> None:
    import fcntl
    import pty
    import termios

    master, slave = pty.openpty()

    def controlling_terminal() -> None:
        # A new session whose controlling terminal is the pty, so Ctrl+C becomes SIGINT.
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [PTSH, "db", "connect", "--db-user=alice", "--db-name=postgres", "aurora"],
        env=env.user_env("alice"),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        preexec_fn=controlling_terminal,
    )
    os.close(slave)
    out = b""

    def read_until(pattern: bytes, timeout: float) -> bool:
        nonlocal out
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pattern in out:
                return True
            if select.select([master], [], [], 0.1)[0]:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    return pattern in out
        return pattern in out

    try:
        assert read_until(b"postgres=>", 20), out
        os.write(master, b"select pg_sleep(30);\n")
        time.sleep(1.0)
        started = time.monotonic()
        os.write(master, b"\x03")  # Ctrl+C, as the terminal sends it
        assert read_until(b"canceling statement due to user request", 10), out
        assert time.monotonic() - started < 5
        os.write(master, b"\\q\n")
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert proc.returncode == 0


def test_tunnel_serves_plain_clients_and_survives_a_malformed_message(env: DbEnv) -> None:
    with open_tunnel(env, "alice") as port:
        psql = ["psql", f"postgres://alice@127.0.0.1:{port}/postgres?sslmode=disable", "-At", "-c"]
        assert subprocess.run([*psql, "select 41 + 1"], capture_output=True, text=True).stdout.strip() == "42"
        # A client that sends an absurd message length: only its own session ends.
        with socket.create_connection(("127.0.0.1", port)) as raw:
            startup = b"user\x00alice\x00database\x00postgres\x00\x00"
            raw.sendall(struct.pack("!ii", 8 + len(startup), 196608) + startup)
            raw.settimeout(10)
            greeting = b""
            while b"Z\x00\x00\x00\x05" not in greeting:
                chunk = raw.recv(65536)
                assert chunk, greeting
                greeting += chunk
            raw.sendall(b"Q" + struct.pack("!i", 0x7FFFFFF0) + b"x" * 100)
            assert _closed(raw)
        again = subprocess.run([*psql, "select 'still here'"], capture_output=True, text=True)
        assert again.stdout.strip() == "still here", again.stderr


def test_dynamic_database_resource_is_served_by_the_agent(env: DbEnv) -> None:
    doc = f"""kind: db
version: v3
metadata:
  name: pgdyn
  description: Dynamic one
  labels:
    env: dev
spec:
  protocol: postgres
  uri: localhost:{env.pg.port}
  tls:
    ca_cert: |
{_indent(Path(env.pg.ca_cert_file).read_text(), 6)}
"""
    created = env.pctl("create", input=doc)
    assert created.returncode == 0, created.stderr
    env.wait_for_servers("pgdyn")
    names = [d["metadata"]["name"] for d in json.loads(env.ptsh("alice", "db", "ls", "--format=json").stdout)]
    assert names == ["aurora", "pgdyn"]
    result = connect(env, "alice", "--db-user=alice", "--db-name=postgres", "pgdyn")
    assert result.returncode == 0, result.stderr
    assert env.pctl("rm", "db/pgdyn").returncode == 0


def test_failover_between_agents_and_a_clear_error_when_none_is_left(env: DbEnv) -> None:
    second = env.start_agent("aurora")
    first = env.agents[0]
    first.stop(signal.SIGKILL)
    result = connect(env, "alice", "--db-user=alice", "--db-name=postgres", "aurora")
    assert result.returncode == 0, result.stderr + second.log()
    second.stop()
    time.sleep(0.5)
    result = connect(env, "alice", "--db-user=alice", "--db-name=postgres", "aurora")
    assert result.returncode != 0
    assert 'no database service is serving "aurora"' in result.stderr
    env.start_agent("aurora")


def test_proxy_restart_agents_reconnect_and_logins_survive(env: DbEnv) -> None:
    env.cluster.restart()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        result = connect(env, "alice", "--db-user=alice", "--db-name=postgres", "aurora")
        if result.returncode == 0:
            break
        time.sleep(0.5)
    assert result.returncode == 0, result.stderr
    status = env.ptsh("alice", "status")
    assert status.returncode == 0 and "Logged in as:       alice" in status.stdout


def test_no_psql_says_what_to_do_instead(env: DbEnv) -> None:
    bare = env.user_env("alice")
    bare["PATH"] = str(Path(PTSH).parent)
    result = subprocess.run([PTSH, "db", "connect", "aurora"], env=bare, capture_output=True, text=True)
    assert result.returncode == 1
    assert "psql was not found" in result.stderr and "ptsh proxy db --tunnel aurora" in result.stderr


def test_scram_password_database(env: DbEnv, pg, tmp_path: Path) -> None:
    pg.create_role("scram_sam", "scram", password="s3cret-sam")
    secret = tmp_path / "sam.pw"
    secret.write_text("s3cret-sam\n")
    env.start_agent("scramdb", f"--password-file={secret}")
    result = connect(env, "alice", "--db-user=scram_sam", "--db-name=postgres", "scramdb")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "scram_sam"
    wrong = env.ptsh(
        "alice", "db", "connect", "--db-user=alice", "--db-name=postgres", "scramdb", "--", "-c", "select 1"
    )
    assert wrong.returncode != 0
    # The database's own refusal reaches psql unchanged (as connected directly); the audit
    # event carries the agent's advice on what to check.
    assert "FATAL:  connection requires a valid client certificate" in wrong.stderr, wrong.stderr
    deadline = time.monotonic() + 10
    refused: list[dict] = []
    while time.monotonic() < deadline and not refused:
        refused = [e for e in env.events(type="db.session.start", user="alice")
                   if e["code"] == "TDB00W" and e.get("db_service") == "scramdb"]
        time.sleep(0.2)
    assert refused and 'refused user "alice"' in refused[-1]["error"] and "pg_hba.conf" in refused[-1]["error"]


def test_logout_of_databases(env: DbEnv) -> None:
    assert env.ptsh("alice", "db", "login", "--db-user=alice", "--db-name=postgres", "aurora").returncode == 0
    out = env.ptsh("alice", "db", "logout")
    assert out.returncode == 0 and "Logged out of database aurora" in out.stdout
    again = env.ptsh("alice", "db", "logout")
    assert again.returncode == 1 and "Not logged into any databases" in again.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _closed(sock: socket.socket) -> bool:
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, TimeoutError):
        return True


def _indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.splitlines())


__all__ = ["PASSWORD", "pty_run"]


def test_an_agent_killed_mid_session_ends_only_that_session(env: DbEnv) -> None:
    victim = env.start_agent("victimdb")
    query = subprocess.Popen(
        [PTSH, "db", "connect", "--db-user=alice", "--db-name=postgres", "victimdb", "--", "-c", "select pg_sleep(20)"],
        env=env.user_env("alice"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    marker = "select pg_sleep(20)"
    deadline = time.monotonic() + 30
    while not env.pg.execute(f"select 1 from pg_stat_activity where query = '{marker}' and state = 'active'"):
        assert time.monotonic() < deadline and query.poll() is None, "the query never started"
        time.sleep(0.1)
    victim.stop(signal.SIGKILL)  # mid-query, not while ptsh is still connecting
    _out, err = query.communicate(timeout=15)
    assert query.returncode != 0
    assert "connection" in err.lower() and "Traceback" not in err
    # Everything else keeps working.
    assert connect(env, "alice", "--db-user=alice", "--db-name=postgres", "aurora").returncode == 0


def test_garbage_instead_of_tls_is_dropped_and_the_proxy_keeps_serving(env: DbEnv) -> None:
    host, port = env.cluster.addr.split(":")
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(b"\x00\x01garbage, not a TLS ClientHello\r\n" * 50)
        raw.settimeout(10)
        assert _closed(raw)
    assert connect(env, "alice", "--db-user=alice", "--db-name=postgres", "aurora").returncode == 0
    assert env.ptsh("alice", "status").returncode == 0
