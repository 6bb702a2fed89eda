"""A whole database-access deployment for end-to-end tests: cluster, agents, a logged-in user.

Everything is a real process: ``pteleport start`` (auth + proxy), one or more
``pteleport db start`` agents, the test PostgreSQL from ``tests/pgserver.py``, and
``ptsh`` logged in through a pseudo-terminal.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness import PCTL, PTELEPORT, PTSH, Cluster, TotpDevice, find_url, free_port, pty_run, run, signup
from tests.pgserver import PgServer

PASSWORD = "correct horse battery"
SEED_ROLE = """kind: role
version: v3
metadata:
  name: db
spec:
  allow:
    db_labels:
      '*': '*'
    db_names:
    - '*'
    db_users:
    - '*'
"""


@dataclass
class Agent:
    name: str
    data_dir: Path
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_connected(self, timeout: float = 20.0) -> None:
        """Until this agent's tunnel to the proxy is up (its log says so)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "connected to the proxy" in self.log():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"agent {self.name} did not connect:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@dataclass
class DbEnv:
    root: Path
    pg: PgServer
    cluster: Cluster
    agents: list[Agent] = field(default_factory=list)
    users: dict[str, TotpDevice] = field(default_factory=dict)

    # --- admin side ----------------------------------------------------------------------
    def pctl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run([PCTL, *args], self.cluster.env(), input=input)

    def pctl_json(self, *args: str) -> Any:
        result = self.pctl(*args, "--format=json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def events(self, **filters: str) -> list[dict[str, Any]]:
        args = ["audit", "events", "--limit", "10000"]
        for key, value in filters.items():
            args += [f"--{key}", value]
        return self.pctl_json(*args)

    def start_agent(
        self,
        name: str = "aurora",
        *extra: str,
        wait: bool = True,
        token_args: tuple[str, ...] = (),
        uri: str | None = None,
    ) -> Agent:
        """A ``pteleport db start`` agent serving ``name``; ``token_args`` scope its join token."""
        token = self.pctl("tokens", "add", "--type=db", "--format=text", *token_args)
        assert token.returncode == 0, token.stderr
        pin = self.pctl_json("status")["ca_pin"]
        data_dir = self.root / f"agent-{len(self.agents)}"
        log_path = self.root / f"agent-{len(self.agents)}.log"
        cmd = [
            PTELEPORT,
            "db",
            "start",
            f"--token={token.stdout.strip()}",
            f"--proxy={self.cluster.addr}",
            f"--ca-pin={pin}",
            f"--name={name}",
            f"--uri={uri or f'localhost:{self.pg.port}'}",
            f"--ca-cert-file={self.pg.ca_cert_file}",
            "--labels=env=dev",
            f"--data-dir={data_dir}",
            f"--nodename=agent-{len(self.agents)}",
            *extra,
        ]
        proc = subprocess.Popen(
            cmd, env=self.cluster.env(), stdout=log_path.open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        agent = Agent(name, data_dir, proc, log_path)
        self.agents.append(agent)
        if wait:
            agent.wait_connected()
            self.wait_for_servers(name)
        return agent

    def wait_for_servers(self, name: str, count: int = 1, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            servers = [s for s in self.pctl_json("get", "db_servers") if s["metadata"]["name"] == name]
            if len(servers) >= count:
                return
            time.sleep(0.2)
        logs = "\n".join(a.log() for a in self.agents)
        raise AssertionError(f"{count} agent(s) for {name} did not register:\n{logs}\n{self.cluster.log()}")

    def add_user(self, name: str, roles: str, *extra: str) -> TotpDevice:
        result = self.pctl("users", "add", name, f"--roles={roles}", *extra)
        assert result.returncode == 0, result.stderr
        secret = signup(self.cluster, find_url(result.stdout), PASSWORD)
        self.users[name] = TotpDevice(secret)
        return self.users[name]

    # --- user side ------------------------------------------------------------------------
    def home(self, user: str) -> Path:
        return self.root / f"home-{user}"

    def user_env(self, user: str) -> dict[str, str]:
        return self.cluster.env(PTSH_HOME=self.home(user))

    def login(self, user: str, *extra: str) -> str:
        device = self.users[user]
        code, out = pty_run(
            [PTSH, "login", f"--proxy={self.cluster.addr}", f"--user={user}", "--insecure", *extra],
            [("assword", PASSWORD), ("OTP code", lambda _out: device.code())],
            self.user_env(user),
        )
        assert code == 0, out
        return out

    def ptsh(self, user: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run([PTSH, *args], self.user_env(user), timeout=timeout)

    @contextlib.contextmanager
    def tunnel(
        self, user: str, db_user: str = "alice", db_name: str = "postgres", database: str = "aurora"
    ) -> Iterator[int]:
        """``ptsh proxy db --tunnel`` as ``user`` (routed to db_user@db_name); yields its local port.

        Stopped with Ctrl+C (SIGINT) at the end, and it must exit cleanly.
        """
        port = free_port()
        proc = subprocess.Popen(
            [PTSH, "proxy", "db", "--tunnel", f"--port={port}", f"--db-user={db_user}", f"--db-name={db_name}", database],
            env=self.user_env(user),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            banner = proc.stdout.readline() if proc.stdout else ""
            assert f"127.0.0.1:{port}" in banner, banner + (proc.stderr.read() if proc.stderr else "")
            yield port
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else proc.returncode

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()
        self.cluster.stop(check=False)


def make_env(root: Path, pg: PgServer, config: str | None = None) -> DbEnv:
    """A cluster (``config``: its config file's text, if given) that trusts ``pg``; it stops if this fails."""
    extra: list[str] = []
    if config is not None:
        root.mkdir(parents=True, exist_ok=True)
        path = root / "cluster.yaml"
        path.write_text(config)
        extra = ["-c", str(path)]
    cluster = Cluster(root / "cluster", extra_args=extra).start()
    env = DbEnv(root, pg, cluster)
    try:
        ca = env.pctl("auth", "export", "--type=db-client")
        assert ca.returncode == 0, ca.stderr
        pg.trust_client_ca(ca.stdout.encode())
        created = env.pctl("create", input=SEED_ROLE)
        assert created.returncode == 0, created.stderr
    except BaseException:
        cluster.stop(check=False)
        raise
    return env
