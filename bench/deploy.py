"""Everything the benchmark talks to, on loopback: PostgreSQL, a cluster, agents, a tunnel, haproxy.

The pieces come from the test helpers (``tests/dbenv.py``, ``tests/harness.py``,
``tests/pgserver.py``): real ``pteleport start``, real ``pteleport db start`` agents, a
PostgreSQL started as the unprivileged ``postgres`` user when we are root, a user who
signed up through the HTTP API and logged in with ``ptsh login`` through a pty.

Roles in PostgreSQL:

- ``bench`` (trust, superuser): the direct path and the haproxy chain (no certificate needed);
- ``benchcert`` (client certificate from the cluster's db CA, superuser): what the agent
  logs in as when a session comes through pteleport.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import tests.dbenv
import tests.harness
from tests.dbenv import SEED_ROLE, Agent, DbEnv
from tests.harness import PTSH, Cluster, free_port
from tests.pgserver import PgServer, ThrowawayCA

DB_SERVICE = "benchdb"  # the database's name in the cluster
DB_NAME = "bench"  # the PostgreSQL database pgbench fills
DIRECT_USER = "bench"
CERT_USER = "benchcert"
CLUSTER_USER = "bencher"
REAL_PTELEPORT = tests.harness.PTELEPORT


def _wrapper(root: Path, name: str, prelude: str, entry: str) -> str:
    """A tiny executable that runs a console script after ``prelude`` (e.g. no uvloop)."""
    path = root / "bin" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\nimport sys\n{prelude}\nfrom {entry} import main\nsys.exit(main())\n")
    path.chmod(0o755)
    return str(path)


def use_pteleport(executable: str) -> None:
    """Which program the test helpers start as ``pteleport`` (they look the name up at call time)."""
    tests.harness.PTELEPORT = executable
    tests.dbenv.PTELEPORT = executable


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class Tunnel:
    proc: subprocess.Popen[str]
    port: int

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Deployment:
    root: Path
    pg: PgServer
    env: DbEnv
    native_port: int
    agent: Agent | None = None
    tunnel: Tunnel | None = None
    native_cert: str = ""
    haproxy: HaproxyChain | None = None
    loop: str = "uvloop"
    extra_agents: list[Agent] = field(default_factory=list)

    # --- connection strings (libpq environment) -----------------------------------------
    def direct_env(self) -> dict[str, str]:
        """psql/pgbench straight to PostgreSQL over TLS (what a user without pteleport does)."""
        return _pg_env(host="127.0.0.1", port=self.pg.port, user=DIRECT_USER, sslmode="require")

    def tunnel_env(self) -> dict[str, str]:
        assert self.tunnel is not None
        return _pg_env(host="127.0.0.1", port=self.tunnel.port, user=CERT_USER, sslmode="disable")

    def native_env(self) -> dict[str, str]:
        return _pg_env(
            host="localhost",
            port=self.native_port,
            user=CERT_USER,
            sslmode="verify-full",
            sslrootcert=f"{self.native_cert}.cas",
            sslcert=f"{self.native_cert}.crt",
            sslkey=f"{self.native_cert}.key",
        )

    def haproxy_env(self) -> dict[str, str]:
        assert self.haproxy is not None
        return _pg_env(host="127.0.0.1", port=self.haproxy.entry_port, user=DIRECT_USER, sslmode="require")

    # --- processes ---------------------------------------------------------------------------
    def proxy_pid(self) -> int:
        assert self.env.cluster.proc is not None
        return self.env.cluster.proc.pid

    def auth_worker_pid(self) -> int:
        """The proxy's auth worker (the API and the audit log's writer), a child of the proxy process."""
        pid = self.proxy_pid()
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            if b"pteleport.authworker" in Path(f"/proc/{child}/cmdline").read_bytes():
                return int(child)
        raise RuntimeError(f"the proxy (pid {pid}) has no auth worker")

    def agent_pid(self) -> int:
        assert self.agent is not None
        return self.agent.proc.pid

    def start_agent(self) -> None:
        old = self.agent
        self.agent = self.env.start_agent(DB_SERVICE)
        if old is not None:
            old.stop()
            self.env.agents.remove(old)
        self.env.wait_for_servers(DB_SERVICE)

    def start_tunnel(self, ptsh: str = PTSH) -> None:
        if self.tunnel is not None:
            self.tunnel.stop()
        port = free_port()
        cmd = [ptsh, "proxy", "db", "--tunnel", f"--port={port}", f"--db-user={CERT_USER}", f"--db-name={DB_NAME}",
               DB_SERVICE]
        proc = subprocess.Popen(cmd, env=self.env.user_env(CLUSTER_USER), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        banner = proc.stdout.readline() if proc.stdout else ""
        if f"127.0.0.1:{port}" not in banner:
            proc.kill()
            raise RuntimeError(f"the tunnel did not start: {banner}{proc.stderr.read() if proc.stderr else ''}")
        self.tunnel = Tunnel(proc, port)

    def switch_loop(self, loop: str) -> None:
        """Restart the proxy and the agent on another event loop ("uvloop" or "asyncio")."""
        if loop == self.loop:
            return
        if loop == "asyncio":
            use_pteleport(_wrapper(self.root, "pteleport-asyncio", "sys.modules['uvloop'] = None", "pteleport.cli"))
        else:
            use_pteleport(REAL_PTELEPORT)
        self.env.cluster.restart()
        self.start_agent()
        self.loop = loop

    def stop(self) -> None:
        if self.tunnel is not None:
            self.tunnel.stop()
        if self.haproxy is not None:
            self.haproxy.stop()
        for agent in self.extra_agents:
            agent.stop()
        with contextlib.suppress(Exception):
            self.env.stop()
        self.pg.stop()


def _pg_env(**conn: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({f"PG{k.upper()}": str(v) for k, v in conn.items()})
    env["PGDATABASE"] = DB_NAME
    env["PGCONNECT_TIMEOUT"] = "10"
    return env


def has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def deploy(root: Path, log: callable) -> Deployment:  # type: ignore[valid-type]
    root.mkdir(parents=True, exist_ok=True)
    log("starting PostgreSQL")
    pg = PgServer.start(root)
    try:
        pg.create_role(DIRECT_USER, "trust", superuser=True)
        pg.create_role(CERT_USER, "cert", superuser=True)
        pg.execute(f"CREATE DATABASE {DB_NAME} OWNER {DIRECT_USER}")
        log("starting the cluster (auth + proxy; its public port also speaks PostgreSQL's protocol)")
        use_pteleport(REAL_PTELEPORT)
        cluster = Cluster(root / "cluster").start()
        native_port = int(cluster.addr.rsplit(":", 1)[1])  # psql with a certificate, straight to the public port
    except BaseException:
        pg.stop()
        raise
    env = DbEnv(root, pg, cluster)
    dep = Deployment(root, pg, env, native_port, loop="uvloop" if has_uvloop() else "asyncio")
    try:
        # What tests/dbenv.make_env does, on a cluster started with our config file.
        ca = env.pctl("auth", "export", "--type=db-client")
        assert ca.returncode == 0, ca.stderr
        pg.trust_client_ca(ca.stdout.encode())
        created = env.pctl("create", input=SEED_ROLE)
        assert created.returncode == 0, created.stderr
        log("starting a database agent")
        dep.start_agent()
        log("signing up and logging in a user (ptsh login through a pty)")
        env.add_user(CLUSTER_USER, "access,db")
        env.login(CLUSTER_USER)
        dep.start_tunnel()
        prefix = root / "native" / CLUSTER_USER
        prefix.parent.mkdir()
        signed = env.pctl("auth", "sign", f"--user={CLUSTER_USER}", "--format=db", f"--db-service={DB_SERVICE}",
                          f"--db-user={CERT_USER}", f"--db-name={DB_NAME}", f"--out={prefix}")
        assert signed.returncode == 0, signed.stderr
        dep.native_cert = str(prefix)
        log("starting the haproxy reference chain")
        dep.haproxy = HaproxyChain.start(root / "haproxy", pg.port)
    except BaseException:
        dep.stop()
        raise
    return dep


# --- the native reference: three haproxy hops with mutual TLS between them ----------------------


HAPROXY_CONF = """\
global
    maxconn 4096
    nbthread 1
    tune.ssl.default-dh-param 2048
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend in
    bind 127.0.0.1:{listen}{bind_tls}
    default_backend out
backend out
    server next 127.0.0.1:{target}{server_tls}
"""


@dataclass
class HaproxyChain:
    """client ─plain─▶ hop1 ─mTLS─▶ hop2 ─mTLS─▶ hop3 ─TCP─▶ PostgreSQL.

    The same shape as ``psql → ptsh tunnel → proxy → agent → PostgreSQL``, one process per
    hop, one thread each. haproxy cannot answer PostgreSQL's SSLRequest, so its last hop
    cannot open TLS to the server itself; the client's own TLS session to PostgreSQL runs
    end to end through the chain instead. That makes three TLS sessions on the path, as in
    pteleport (tunnel→proxy, proxy→agent, agent→PostgreSQL).
    """

    procs: list[subprocess.Popen[bytes]]
    entry_port: int

    @classmethod
    def start(cls, root: Path, pg_port: int) -> HaproxyChain:
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(haproxy).exists():
            raise FileNotFoundError("haproxy is not installed (apt-get install haproxy)")
        root.mkdir(parents=True, exist_ok=True)
        ca = ThrowawayCA.create("bench haproxy CA")
        (root / "ca.pem").write_bytes(ca.cert_pem)
        cert, key = ca.issue("hop", ["localhost", "127.0.0.1"], server=True)
        (root / "server.pem").write_bytes(cert + key)
        ccert, ckey = ca.issue("hop-client", None)
        (root / "client.pem").write_bytes(ccert + ckey)
        for name in ("server.pem", "client.pem"):
            (root / name).chmod(0o600)
        ports = [free_port(), free_port(), free_port()]
        targets = [ports[1], ports[2], pg_port]
        tls_in = f" ssl crt {root}/server.pem ca-file {root}/ca.pem verify required"
        tls_out = f" ssl crt {root}/client.pem ca-file {root}/ca.pem verify required sni str(localhost)"
        procs = []
        for i in range(3):
            conf = HAPROXY_CONF.format(
                listen=ports[i],
                target=targets[i],
                bind_tls="" if i == 0 else tls_in,
                server_tls="" if i == 2 else tls_out,
            )
            path = root / f"hop{i + 1}.cfg"
            path.write_text(textwrap.dedent(conf))
            check = subprocess.run([haproxy, "-c", "-q", "-f", str(path)], capture_output=True, text=True)
            if check.returncode != 0:
                raise RuntimeError(f"haproxy refused {path}: {check.stderr}")
            log = (root / f"hop{i + 1}.log").open("ab")
            procs.append(subprocess.Popen([haproxy, "-db", "-f", str(path)], stdout=log, stderr=subprocess.STDOUT))
        chain = cls(procs, ports[0])
        for port in ports:
            _wait_port(port)
        return chain

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")
