"""Automatic database users end to end: real cluster, real agent, real PostgreSQL, real psql.

The agent creates the PostgreSQL role of a pteleport user on connect (as the database's
admin user, by client certificate), grants exactly the roles' ``db_roles``, and retires the
role after the last session (``keep``: no roles, NOLOGIN; ``best_effort_drop``: dropped, or
disabled when it owns objects). The tests read the outcome from ``pg_roles`` and
``pg_auth_members`` as the superuser, and from the agent's log and the audit log.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dbenv import DbEnv, make_env
from tests.pgserver import PgServer

pytestmark = pytest.mark.slow

MARKER = "teleport-auto-user"
ROLES = """kind: role
version: v7
metadata:
  name: autokeep
spec:
  options:
    create_db_user_mode: keep
  allow:
    db_labels:
      auto: keep
    db_names: ['*']
    db_roles: [au_reader, au_writer]
---
kind: role
version: v7
metadata:
  name: autodrop
spec:
  options:
    create_db_user: true
    create_db_user_mode: best_effort_drop
  allow:
    db_labels:
      auto: keep
    db_names: ['*']
    db_roles: [au_creator]
---
kind: role
version: v7
metadata:
  name: legacy
spec:
  options:
    create_db_user: true
  allow:
    db_labels:
      auto: bare
    db_names: ['*']
"""


def _indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.splitlines())


def db_doc(env: DbEnv, name: str, labels: str, admin: str | None) -> str:
    admin_part = f"  admin_user:\n    name: {admin}\n" if admin else ""
    return f"""kind: db
version: v3
metadata:
  name: {name}
  labels: {{{labels}}}
spec:
  protocol: postgres
  uri: localhost:{env.pg.port}
{admin_part}  tls:
    ca_cert: |
{_indent(Path(env.pg.ca_cert_file).read_text(), 6)}
"""


@pytest.fixture(scope="module")
def env(pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DbEnv]:
    pg.execute(
        "DO $$ BEGIN"
        " IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'au_reader') THEN CREATE ROLE au_reader NOLOGIN; END IF;"
        " IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'au_writer') THEN CREATE ROLE au_writer NOLOGIN; END IF;"
        " IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'au_other') THEN CREATE ROLE au_other NOLOGIN; END IF;"
        " IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'au_creator') THEN CREATE ROLE au_creator NOLOGIN; END IF;"
        " END $$;"
        " CREATE SCHEMA IF NOT EXISTS au_sandbox;"
        " GRANT USAGE, CREATE ON SCHEMA au_sandbox TO au_creator;"
    )
    # The cluster is shared by the whole run: the automatic users' names must be free here.
    pg.execute("DROP ROLE IF EXISTS carol, erin, hank, ivan")
    pg.create_role("au_admin", "cert")
    pg.execute("ALTER ROLE au_admin CREATEROLE")
    pg.create_role("au_weak", "cert")  # may log in, may not create roles
    pg.create_role("gina", "cert")  # someone else's role, not in the marker group
    # Automatic users log in with the agent's client certificate, like any other db user.
    pg.add_hba([f"hostssl all +{MARKER} 127.0.0.1/32 cert"])
    e = make_env(tmp_path_factory.mktemp("autousers"), pg)
    try:
        e.start_agent("aurora")
        assert e.pctl("create", input=ROLES).returncode == 0
        for name, labels, admin in (
            ("autodb", "auto: keep", "au_admin"),
            ("weakdb", "auto: keep", "au_weak"),
            ("ghostdb", "auto: keep", "au_ghost"),
            ("bare", "auto: bare", None),
        ):
            created = e.pctl("create", input=db_doc(e, name, labels, admin))
            assert created.returncode == 0, created.stderr
            e.wait_for_servers(name)
        for user, roles in (("carol", "autokeep"), ("erin", "autodrop"), ("gina", "autokeep"), ("hank", "autokeep")):
            e.add_user(user, roles)
            e.login(user)
        e.add_user("ivan", "legacy")
        e.login("ivan")
        yield e
    finally:
        e.stop()


def connect(env: DbEnv, user: str, database: str, sql: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return env.ptsh(user, "db", "connect", "--db-name=postgres", *extra, database, "--", "-At", "-c", sql)


def role_state(pg: PgServer, name: str) -> tuple[bool, list[str]] | None:
    """(can log in, memberships) of role ``name``, or None when it does not exist."""
    rows = pg.execute(f"SELECT rolcanlogin FROM pg_roles WHERE rolname = '{name}'")
    if not rows:
        return None
    groups = pg.execute(
        "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid"
        f" JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = '{name}' ORDER BY 1"
    )
    return bool(rows[0][0]), [g[0] for g in groups]


def wait_state(pg: PgServer, name: str, expected: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = role_state(pg, name)
        if state == expected:
            return
        time.sleep(0.1)
    raise AssertionError(f"role {name}: {role_state(pg, name)} != {expected}")


MEMBERSHIPS = (
    "SELECT current_user || ':' || string_agg(g.rolname, ',' ORDER BY g.rolname) FROM pg_auth_members m"
    " JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = current_user)"
)


def test_keep_creates_the_user_grants_its_roles_then_disables_it(env: DbEnv) -> None:
    result = connect(env, "carol", "autodb", MEMBERSHIPS)
    assert result.returncode == 0, result.stderr + env.agents[0].log()
    assert result.stdout.strip() == f"carol:au_reader,au_writer,{MARKER}"
    wait_state(env.pg, "carol", (False, [MARKER]))  # revoked and NOLOGIN after the session
    log = env.agents[0].log()
    assert "database user carol in autodb ready (mode keep)" in log
    assert "database user carol in autodb disabled at the end of its last session" in log
    start = [e for e in env.events(type="db.session.start") if e.get("user") == "carol" and e["code"] == "TDB00I"]
    assert start and start[-1]["db_roles"] == ["au_reader", "au_writer"]
    assert start[-1]["db_user"] == "carol"


def test_roles_granted_outside_the_role_list_are_revoked_on_the_next_connect(env: DbEnv) -> None:
    assert connect(env, "carol", "autodb", "select 1").returncode == 0
    wait_state(env.pg, "carol", (False, [MARKER]))
    env.pg.execute("GRANT au_other TO carol")  # left over, e.g. from an earlier role list
    result = connect(env, "carol", "autodb", MEMBERSHIPS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"carol:au_reader,au_writer,{MARKER}"
    wait_state(env.pg, "carol", (False, [MARKER]))


def test_another_db_user_is_refused_with_the_name_to_use(env: DbEnv) -> None:
    result = connect(env, "carol", "autodb", "select 1", "--db-user=au_admin")
    assert result.returncode == 1, result.stderr
    assert 'connect as "carol" (your pteleport user name), not "au_admin"' in result.stderr


def test_best_effort_drop_drops_the_user_or_disables_it_when_it_owns_objects(env: DbEnv) -> None:
    result = connect(env, "erin", "autodb", MEMBERSHIPS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"erin:au_creator,{MARKER}"
    wait_state(env.pg, "erin", None)  # dropped
    assert "database user erin in autodb dropped at the end of its last session" in env.agents[0].log()

    result = connect(env, "erin", "autodb", "create table au_sandbox.erins (x int)")
    assert result.returncode == 0, result.stderr
    wait_state(env.pg, "erin", (False, [MARKER]))  # owns a table: disabled instead
    log = env.agents[0].log()
    assert "database user erin in autodb could not be dropped" in log
    assert "disabling it instead" in log
    env.pg.execute("DROP TABLE au_sandbox.erins")


def test_legacy_create_db_user_without_an_admin_user_is_refused_before_a_certificate(env: DbEnv) -> None:
    result = connect(env, "ivan", "bare", "select 1")
    assert result.returncode == 4, result.stderr
    assert 'database "bare" has no admin user; ask an admin to set spec.admin_user.name on it' in result.stderr
    assert "create_db_user_mode: keep" in result.stderr


def test_a_missing_admin_user_is_named_with_the_fix(env: DbEnv) -> None:
    result = connect(env, "carol", "ghostdb", "select 1")
    assert result.returncode != 0
    assert 'could not log in to database "ghostdb" as its admin user "au_ghost"' in result.stderr, result.stderr
    assert 'CREATE ROLE "au_ghost" LOGIN CREATEROLE' in result.stderr
    failed = [e for e in env.events(type="db.session.start") if e.get("db_service") == "ghostdb"]
    assert failed and failed[-1]["code"] == "TDB00W"


def test_an_admin_user_without_createrole_is_named_with_the_fix(env: DbEnv) -> None:
    result = connect(env, "carol", "weakdb", "select 1")
    assert result.returncode != 0
    assert 'the admin user "au_weak" of database "weakdb" lacks CREATEROLE' in result.stderr, result.stderr
    assert 'ALTER ROLE "au_weak" CREATEROLE' in result.stderr


def test_a_role_that_pteleport_did_not_create_is_not_taken_over(env: DbEnv) -> None:
    before = role_state(env.pg, "gina")
    result = connect(env, "gina", "autodb", "select 1")
    assert result.returncode != 0
    assert 'already has a role "gina" that pteleport did not create' in result.stderr, result.stderr
    assert f'GRANT "{MARKER}" TO "gina"' in result.stderr
    assert role_state(env.pg, "gina") == before  # untouched


def test_sessions_starting_together_share_one_user_and_the_last_one_disables_it(env: DbEnv) -> None:
    with env.tunnel("hank", db_user="hank", db_name="postgres", database="autodb") as port:
        psql = ["psql", f"host=127.0.0.1 port={port} user=hank dbname=postgres sslmode=disable", "-At", "-c"]
        procs = [
            subprocess.Popen([*psql, "select pg_sleep(1), current_user"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for _ in range(6)
        ]
        outs = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0] * 6, outs
        assert all(out.strip() == "|hank" for out, _ in outs), outs
    wait_state(env.pg, "hank", (False, [MARKER]))
    log = env.agents[0].log()
    assert log.count("database user hank in autodb ready") == 6
    assert log.count("database user hank in autodb disabled") >= 1


class _SuperuserSession:
    """``AdminSession.query`` over psycopg as the superuser: the provisioning SQL run directly."""

    def __init__(self, pg: PgServer) -> None:
        import psycopg

        self.conn = psycopg.connect(pg.superuser_dsn(), autocommit=True)

    async def query(self, sql: str) -> list[list[str | None]]:
        import psycopg

        from pteleport.dbagent.adminsql import SqlError
        from pteleport.pgwire import ServerError

        try:
            cur = self.conn.execute(sql.encode())
        except psycopg.Error as exc:
            raise SqlError(ServerError("ERROR", exc.sqlstate or "XX000", str(exc))) from None
        if cur.description is None:
            return []
        return [["t" if v is True else "f" if v is False else None if v is None else str(v) for v in row]
                for row in cur.fetchall()]

    async def value(self, sql: str) -> str | None:
        rows = await self.query(sql)
        return rows[0][0] if rows and rows[0] else None


def test_on_rds_the_user_also_gets_rds_iam_and_missing_db_roles_are_named(pg: PgServer) -> None:
    import asyncio

    from common.errors import NotFound
    from pteleport.auth.db_users import AutoUserPlan
    from pteleport.dbagent.autousers import AutoUsers

    pg.execute("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_iam')"
               " THEN CREATE ROLE rds_iam NOLOGIN; END IF; END $$;"
               " DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'au_reader')"
               " THEN CREATE ROLE au_reader NOLOGIN; END IF; END $$;")
    rds = {"metadata": {"name": "aurora"}, "spec": {"uri": "x:5432", "aws": {"region": "us-west-1"}}}
    session = _SuperuserSession(pg)
    users = AutoUsers(None)  # type: ignore[arg-type]  # _provision needs no credentials
    plan = AutoUserPlan("rds-user", "keep", ("au_reader",), "postgres", None)
    granted = asyncio.run(users._provision(session, plan, rds))  # type: ignore[arg-type]
    assert granted == ["au_reader", "rds_iam"]
    assert role_state(pg, "rds-user") == (True, ["au_reader", "rds_iam", MARKER])
    missing = AutoUserPlan("rds-user", "keep", ("au_reader", "au_missing"), "postgres", None)
    with pytest.raises(NotFound, match="has no role 'au_missing' to grant your database user"):
        asyncio.run(users._provision(session, missing, rds))  # type: ignore[arg-type]
    assert role_state(pg, "rds-user") == (True, ["au_reader", "rds_iam", MARKER])  # rolled back, unchanged
    asyncio.run(users._retire(session, plan, "aurora"))  # type: ignore[arg-type]
    assert role_state(pg, "rds-user") == (False, [MARKER])
    pg.execute('DROP ROLE "rds-user"')
