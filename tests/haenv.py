"""An HA deployment for end-to-end tests: two auth+proxy processes on one PostgreSQL, haproxy in front.

Everything is a real process: the test PostgreSQL (``tests/pgserver.py``) holds both the
cluster state and the audit table; two ``pteleport start`` processes use it; haproxy (TCP
mode, round robin, ``option redispatch``) is the load balancer that agents and ``ptsh``
are given as their proxy address. ``HaEnv`` is a ``DbEnv`` whose ``cluster`` is the load
balancer's address (pctl still runs against proxy A's admin identity).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.dbenv import SEED_ROLE, DbEnv
from tests.harness import PTSH, Cluster, free_port
from tests.pgserver import PgServer

HAPROXY_CONF = """\
global
    maxconn 2000
defaults
    mode tcp
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    retries 3
    option redispatch
frontend pteleport
    bind 127.0.0.1:{listen}
    default_backend proxies
backend proxies
    balance random
{servers}
"""


def haproxy_binary() -> str:
    return shutil.which("haproxy") or "/usr/sbin/haproxy"


@dataclass
class Haproxy:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @classmethod
    def start(cls, root: Path, backends: list[int]) -> Haproxy:
        root.mkdir(parents=True, exist_ok=True)
        port = free_port()
        servers = "\n".join(
            f"    server p{i} 127.0.0.1:{b} check inter 300ms fall 1 rise 2" for i, b in enumerate(backends)
        )
        path = root / "haproxy.cfg"
        path.write_text(HAPROXY_CONF.format(listen=port, servers=servers))
        check = subprocess.run([haproxy_binary(), "-c", "-q", "-f", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        log_path = root / "haproxy.log"
        proc = subprocess.Popen([haproxy_binary(), "-db", "-f", str(path)], stdout=log_path.open("ab"),
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        return cls(proc, port, log_path)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class _Front(Cluster):
    """The load balancer dressed as a Cluster for DbEnv: its address, proxy A's admin identity."""

    def __init__(self, behind: Cluster, lb: Haproxy) -> None:
        super().__init__(behind.data_dir, port=lb.port)
        self.behind = behind

    def log(self) -> str:
        return self.behind.log()

    def stop(self, check: bool = True, timeout: float = 15.0) -> int | None:
        return None


@dataclass
class HaEnv(DbEnv):
    proxies: list[Cluster] = field(default_factory=list)
    lb: Haproxy | None = None

    def logs(self) -> str:
        return "\n".join(f"--- {p.data_dir.name}\n{p.log()}" for p in self.proxies) + "\n".join(
            f"--- agent {a.name}\n{a.log()}" for a in self.agents
        )

    def wait_mesh(self, timeout: float = 30.0) -> None:
        """Until every agent has a tunnel to every running proxy (each proxy's log says so)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(_connected(p.log(), f"agent-{i}") for p in self.proxies if p.proc is not None
                   for i in range(len(self.agents))):
                return
            time.sleep(0.2)
        raise AssertionError("the agents did not reach every proxy:\n" + self.logs())

    def home_via(self, user: str, index: int) -> Path:
        """A copy of ``user``'s ptsh home whose profile points at proxy ``index`` directly (not the LB)."""
        home = self.root / f"home-{user}-via-{index}"
        if home.exists():
            shutil.rmtree(home)
        shutil.copytree(self.home(user), home)
        for profile in home.glob("*.yaml"):
            text = profile.read_text()
            lines = [f"web_proxy_addr: {self.proxies[index].addr}" if line.startswith("web_proxy_addr:") else line
                     for line in text.splitlines()]
            profile.write_text("\n".join(lines) + "\n")
        return home

    @contextlib.contextmanager
    def tunnel_via(self, user: str, index: int, db_user: str = "alice", database: str = "aurora") -> Iterator[int]:
        """``ptsh proxy db --tunnel`` through proxy ``index`` only; yields its local port."""
        port = free_port()
        proc = subprocess.Popen(
            [PTSH, "proxy", "db", "--tunnel", f"--port={port}", f"--db-user={db_user}", "--db-name=postgres", database],
            env=self.cluster.env(PTSH_HOME=self.home_via(user, index)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            banner = proc.stdout.readline() if proc.stdout else ""
            assert f"127.0.0.1:{port}" in banner, banner + (proc.stderr.read() if proc.stderr else "")
            yield port
        finally:
            proc.terminate()
            proc.wait(10)

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        proxy = self.proxies[index]
        assert proxy.proc is not None
        proxy.proc.send_signal(sig)
        proxy.proc.wait(15)
        proxy.proc = None
        if proxy._log is not None:
            proxy._log.close()
            proxy._log = None

    def restart(self, index: int) -> None:
        """Start proxy ``index`` again (same data dir, port and config) after a kill."""
        self.proxies[index].start(timeout=60)

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()
        for proxy in self.proxies:
            proxy.stop(check=False)
        if self.lb is not None:
            self.lb.stop()


def _connected(text: str, hostname: str) -> bool:
    """Whether the last word of a proxy's log about agent ``hostname`` is that it connected."""
    return text.rfind(f"({hostname}) connected") > text.rfind(f"({hostname}) disconnected")


def proxy_config(root: Path, name: str, dsn: str, extra: str = "") -> Path:
    path = root / f"{name}.yaml"
    path.write_text(
        "teleport:\n"
        f"  nodename: {name}\n"
        f"  data_dir: {root / name}\n"
        "  shutdown_timeout: 1s\n"
        "  storage:\n"
        "    type: postgresql\n"
        f"    conn_string: {json.dumps(dsn)}\n"
        "auth_service:\n"
        "  cluster_name: ha.example.com\n" + textwrap.dedent(extra)
    )
    return path


def make_ha_env(root: Path, pg: PgServer, dbname: str, count: int = 2, start_timeout: float = 60.0) -> HaEnv:
    """``count`` auth+proxy processes on a fresh PostgreSQL database ``dbname``, haproxy in front."""
    pg.execute(f"DROP DATABASE IF EXISTS {dbname}")
    pg.execute(f"CREATE DATABASE {dbname}")
    dsn = pg.superuser_dsn(dbname)
    root.mkdir(parents=True, exist_ok=True)
    proxies: list[Cluster] = []
    lb = None
    try:
        for i in range(count):
            name = f"proxy-{'abcdefgh'[i]}"
            cluster = Cluster(root / name, extra_args=["-c", str(proxy_config(root, name, dsn))])
            proxies.append(cluster.start(timeout=start_timeout))
        lb = Haproxy.start(root / "lb", [p.port for p in proxies])
        env = HaEnv(root, pg, _Front(proxies[0], lb), proxies=proxies, lb=lb)
        ca = env.pctl("auth", "export", "--type=db-client")
        assert ca.returncode == 0, ca.stderr
        pg.trust_client_ca(ca.stdout.encode())
        created = env.pctl("create", input=SEED_ROLE)
        assert created.returncode == 0, created.stderr
    except BaseException:
        for proxy in proxies:
            proxy.stop(check=False)
        if lb is not None:
            lb.stop()
        raise
    return env
