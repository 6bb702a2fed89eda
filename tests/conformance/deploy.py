"""One PostgreSQL, reachable two ways: directly, and through a whole pteleport deployment.

- PostgreSQL from ``tests/pgserver.py``, listening on 127.0.0.1 and ::1.
- **direct**: the suites connect to ``[::1]:<pg port>``; pg_hba.conf gives ::1 the rules
  the suite's own CI uses (md5/password/scram databases for pg8000), then ``trust``.
- **tunnel**: the suites connect to ``ptsh proxy db --tunnel`` on 127.0.0.1 (plain text);
  the tunnel's mTLS goes to the proxy (``pteleport start``), the proxy's reverse tunnel to
  a ``pteleport db start`` agent, and the agent connects to ``127.0.0.1:<pg port>`` over TLS
  with a client certificate from the cluster's db CA, which pg_hba.conf requires
  (``hostssl all all 127.0.0.1/32 cert``) for every role outside the ``pt_*`` groups.

The cluster user ``conformer`` signs up and logs in with ``ptsh login`` (password + TOTP,
through a pty), as a person does; ``deploy(..., identity=True)`` gives it an identity file
from ``pctl auth sign`` instead (``ptsh -i FILE``), which skips the wait for a fresh TOTP
time step (up to 30 s) — the quick pytest subset uses that. The tunnel is the same either way.

The user has the seed role ``db`` (``db_users: ['*']``,
``db_names: ['*']``); the tunnel's route is db user ``postgres``, db name ``postgres``,
which is what the suites ask for by default. The PostgreSQL role ``postgres`` is the
superuser both ways (the suites create databases, roles and extensions).

``reset()`` puts the server back in the same state before every run (databases and roles
the previous run left behind are dropped), so the two paths start alike.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.conformance.suites import SUPERUSER_PASSWORD, Endpoint, Suite
from tests.dbenv import Agent, DbEnv, make_env
from tests.harness import PTSH, free_port
from tests.pgserver import AUTH_GROUPS, SUPERUSER, PgServer

DB_SERVICE = "conformance"
CLUSTER_USER = "conformer"
DB_USER = SUPERUSER
DB_NAME = "postgres"
DIRECT_HOST = "::1"


class DeployError(RuntimeError):
    """The deployment could not be started (the message says which part and why)."""


@dataclass
class Conformance:
    root: Path
    pg: PgServer
    env: DbEnv
    agent: Agent
    tunnel: subprocess.Popen[str]
    tunnel_port: int

    def endpoint(self, name: str) -> Endpoint:
        if name == "direct":
            return Endpoint("direct", DIRECT_HOST, self.pg.port)
        return Endpoint("tunnel", "127.0.0.1", self.tunnel_port)

    def configure(self, suites: list[Suite]) -> None:
        """pg_hba lines of the suites' CI for the direct path, then trust on ::1; cert from 127.0.0.1."""
        lines = [line for suite in suites for line in suite.hba]
        self.pg.add_hba([*lines, f"host all all {DIRECT_HOST}/128 trust", "hostssl all all 127.0.0.1/32 cert"])

    def reset(self, suite: Suite) -> None:
        """Undo what earlier runs left (settings, databases, roles); recreate ``postgres``; the suite's set-up SQL."""
        keep_roles = {SUPERUSER, *AUTH_GROUPS.values()}
        self.pg.execute("ALTER SYSTEM RESET ALL")  # e.g. a test that turned ssl off and failed to turn it on
        self.pg.reload()
        self.pg.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            dbname="template1",
        )
        for (name,) in self.pg.execute("SELECT datname FROM pg_database WHERE NOT datistemplate", dbname="template1"):
            self.pg.execute(f'DROP DATABASE "{name}" WITH (FORCE)', dbname="template1")
        for (name,) in self.pg.execute("SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_'", dbname="template1"):
            if name not in keep_roles:
                self.pg.execute(f'DROP OWNED BY "{name}"; DROP ROLE "{name}"', dbname="template1")
        self.pg.execute(f'CREATE DATABASE "{DB_NAME}"', dbname="template1")
        self.pg.execute(f"ALTER ROLE {SUPERUSER} PASSWORD '{SUPERUSER_PASSWORD}'")
        for sql in suite.setup_sql:
            self.pg.execute(sql)

    def stop(self) -> None:
        if self.tunnel.poll() is None:
            self.tunnel.send_signal(signal.SIGINT)
            try:
                self.tunnel.wait(10)
            except subprocess.TimeoutExpired:
                self.tunnel.kill()
                self.tunnel.wait()
        with contextlib.suppress(Exception):
            self.env.stop()
        self.pg.stop()


def ipv6_loopback() -> bool:
    """True if this machine can listen on ::1 (the direct path's address)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind((DIRECT_HOST, 0))
            return True
    except OSError:
        return False


def start_tunnel(env: DbEnv, identity: Path | None = None) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    cmd = [PTSH, *(["-i", str(identity)] if identity else []), "proxy", "db", "--tunnel", f"--port={port}",
           f"--db-user={DB_USER}", f"--db-name={DB_NAME}", DB_SERVICE]
    proc = subprocess.Popen(cmd, env=env.user_env(CLUSTER_USER), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    banner = proc.stdout.readline() if proc.stdout else ""
    if f"127.0.0.1:{port}" not in banner:
        proc.kill()
        raise DeployError(f"ptsh proxy db --tunnel did not start: {banner}{proc.stderr.read() if proc.stderr else ''}")
    return proc, port


def deploy(root: Path, log: Callable[[str], None] = print, identity: bool = False) -> Conformance:
    """PostgreSQL, ``pteleport start``, an agent, a logged-in user and a tunnel; ``stop()`` ends them all."""
    if not ipv6_loopback():
        raise DeployError("this machine cannot listen on ::1; the direct path needs the IPv6 loopback so that "
                          "pg_hba.conf can tell it from the agent's connections (from 127.0.0.1)")
    root.mkdir(parents=True, exist_ok=True)
    log("starting PostgreSQL (127.0.0.1 and ::1)")
    pg = PgServer.start(root, extra_listen=[DIRECT_HOST])
    env: DbEnv | None = None
    try:
        log("starting the cluster, an agent, a user logged in with ptsh, and the tunnel")
        env = make_env(root, pg)
        agent = env.start_agent(DB_SERVICE, uri=f"127.0.0.1:{pg.port}")
        identity_file = None
        if identity:
            added = env.pctl("users", "add", CLUSTER_USER, "--roles=access,db")
            identity_file = root / f"{CLUSTER_USER}.identity"
            signed = env.pctl("auth", "sign", f"--user={CLUSTER_USER}", "--ttl=2h", f"--out={identity_file}")
            if added.returncode != 0 or signed.returncode != 0:
                raise DeployError(f"could not make an identity file: {added.stderr}{signed.stderr}")
        else:
            env.add_user(CLUSTER_USER, "access,db")
            env.login(CLUSTER_USER)
        tunnel, port = start_tunnel(env, identity_file)
    except BaseException:
        if env is not None:
            with contextlib.suppress(Exception):
                env.stop()
        pg.stop()
        raise
    return Conformance(root, pg, env, agent, tunnel, port)
