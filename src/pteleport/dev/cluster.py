"""What `pteleport dev` does, in order, and how it stops.

1. Find PostgreSQL's binaries (or say how to install them) and take the data dir's lock.
2. Start the cluster: ``pteleport start --data-dir DATA --listen ADDR`` (a child process).
3. As the cluster's admin (``DATA/admin-identity.pem``, over the API, as pctl would): a
   server certificate for PostgreSQL signed by the db CA.
4. Start PostgreSQL (initdb on the first run) with that certificate, the db client CA and
   ``cert`` authentication; make the db user and the ``demo`` database.
5. The cluster user named after you, with the roles access, editor and auditor and the
   traits ``db_users=[you]``, ``db_names=[demo]``: a sign-up link until they have signed up.
6. Start the database agent (``pteleport start -c DATA/dev/agent.yaml``), joined once with a
   join token scoped to ``demo`` (removed when the agent has joined), and wait until it serves
   ``demo``.
7. Print what to run, then wait. Ctrl+C or SIGTERM stops the agent, the cluster and PostgreSQL;
   so does any of them ending by itself (then with its reason, exit 1).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import IO, Any

from common.errors import BadParameter, ConnectionProblem, InternalError, PteleportError, UsageError
from pteleport.dev.children import Child
from pteleport.dev.postgres import DevPostgres, find_bindir, reachable_by_others, server_user

DEMO = "demo"
ROLES = ["access", "editor", "auditor"]
DEFAULT_LISTEN = "127.0.0.1:3080"
SERVER_CERT_TTL = 365 * 24 * 3600
START_TIMEOUT = 60.0


class _Stop(Exception):
    """Ctrl+C or SIGTERM."""


def _on_signal(signum: int, _frame: Any) -> None:
    raise _Stop(signum)


def _say(text: str = "") -> None:
    print(text, flush=True)


class DevCluster:
    """One run of `pteleport dev` (see the module's docstring)."""

    def __init__(self, data_dir: Path, listen: str, user: str, pg_bindir: str | None) -> None:
        self.data = data_dir
        self.listen = listen
        self.user = user
        self.dev = data_dir / "dev"
        self.logs = self.dev / "logs"
        self.bindir = find_bindir(pg_bindir)
        self.owner = server_user()
        self.children: list[Child] = []
        self.postgres: DevPostgres | None = None
        self._lock: IO[str] | None = None
        self._admin: Any = None

    # --- the run -----------------------------------------------------------------------
    def run(self) -> None:
        previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._lock_data_dir()
            self._start_cluster()
            self._start_postgres()
            link, note = self._ensure_user()
            self._start_agent()
            self._print(link, note)
            self._watch()
        except _Stop:
            pass
        finally:
            for sig in previous:
                signal.signal(sig, signal.SIG_IGN)  # a second Ctrl+C must not cut the clean-up short
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _lock_data_dir(self) -> None:
        import fcntl

        self.dev.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = open(self.dev / "lock", "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            pid = lock.read().strip() or "?"
            lock.close()
            raise BadParameter(
                f"another pteleport dev (pid {pid}) is running with {self.data}; stop it first (Ctrl+C in its terminal)"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        self._lock = lock

    def _state(self) -> dict[str, Any]:
        try:
            doc = json.loads((self.dev / "state.json").read_text())
            return doc if isinstance(doc, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save_state(self, **values: Any) -> None:
        from common.identity_file import write_private

        write_private(self.dev / "state.json", json.dumps({**self._state(), **values}, indent=2).encode())

    def _spawn(self, name: str, argv: list[str], log: str) -> Child:
        child = Child(name, [sys.executable, "-m", "pteleport.cli", *argv], self.logs / log)
        self.children.append(child)
        child.start()
        return child

    def _failed(self, child: Child, what: str) -> PteleportError:
        reason = child.problem() or f"exit code {child.exited()}"
        return InternalError(f"{what} (exit {child.exited()}): {reason}; its log is {child.log_path}")

    # --- 2. the cluster ------------------------------------------------------------------
    def _start_cluster(self) -> None:
        started = time.time()
        child = self._spawn("cluster", ["start", "--data-dir", str(self.data), "--listen", self.listen], "cluster.log")
        process = self.data / "process.json"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if child.exited() is not None:
                raise self._failed(child, "the cluster did not start")
            if process.exists() and process.stat().st_mtime >= started - 1:
                try:
                    self._admin = self._admin_client()
                    self._admin.get("/v1/status")
                    return
                except (ConnectionProblem, PteleportError):
                    pass
            if time.monotonic() > deadline:
                raise InternalError(f"the cluster did not answer within {START_TIMEOUT:.0f} s; its log is "
                                        f"{child.log_path}")
            time.sleep(0.2)

    def _admin_client(self) -> Any:
        from common.client import ClusterClient, ClusterCredentials
        from common.identity_file import host_cas, load

        ident = load(self.data / "admin-identity.pem")
        return ClusterClient(self.listen, creds=ClusterCredentials(ident.cert, ident.key, host_cas(ident.cas)))

    # --- 3-4. PostgreSQL -----------------------------------------------------------------
    def _postgres_root(self) -> Path:
        """DATA/dev/postgres, unless the server's user cannot reach DATA (root's home, say): then
        a directory of ours (random name, made by us) under /var/tmp, remembered in state.json."""
        import tempfile

        inside = self.dev / "postgres"
        if self.owner is None or reachable_by_others(self.dev):
            return inside
        kept = Path(str(self._state().get("pg_root") or ""))
        if kept.is_absolute() and kept.is_dir() and not kept.is_symlink() and kept.stat().st_uid == os.geteuid():
            return kept
        # Made by mkdtemp (a random name, ours): nothing another user prepared is ever used.
        base = next((b for b in ("/var/tmp", tempfile.gettempdir()) if reachable_by_others(Path(b))), None)  # noqa: S108
        if base is None:
            raise BadParameter(f"PostgreSQL runs as {self.owner.pw_name} and cannot reach {self.data}; "
                               "pass a --data-dir that other users may traverse")
        root = Path(tempfile.mkdtemp(prefix="pteleport-dev-", dir=base))
        os.chmod(root, 0o755)  # noqa: S103 - the server user traverses it; its data dir is 0700
        return root

    def _start_postgres(self) -> None:
        from common.tls import generate_private_key, private_key_pem, public_key_pem

        root = self._postgres_root()
        pg = DevPostgres(root, self.bindir, self.owner, self.logs / "postgres.log")
        self.postgres = pg
        pg.init()
        key = generate_private_key()
        answer = self._admin.post(
            "/v1/certs/db-server",
            {"hosts": ["localhost", "127.0.0.1"], "public_key": public_key_pem(key).decode(),
             "ttl_seconds": SERVER_CERT_TTL},
        )
        db_ca = answer["ca"].encode()
        pg.write_tls(answer["cert"].encode(), private_key_pem(key), db_ca)
        (self.dev / "db-ca.pem").write_bytes(db_ca)  # what the agent verifies the server with
        port = _free_port(self._state().get("pg_port"))
        self._save_state(pg_root=str(root), pg_port=port)
        pg.start(port)
        self.children.append(pg.child)  # type: ignore[arg-type]
        pg.ensure_demo(self.user, DEMO)

    # --- 5. the user ---------------------------------------------------------------------
    def _ensure_user(self) -> tuple[str | None, str]:
        """(a sign-up link when they have not signed up, a note about what changed)."""
        from urllib.parse import quote

        users = {u["metadata"]["name"]: u for u in self._admin.get("/v1/users")}
        traits = {"db_users": [self.user], "db_names": [DEMO]}
        doc = users.get(self.user)
        if doc is None:
            answer = self._admin.post("/v1/users", {"name": self.user, "roles": ROLES, "traits": traits})
            return answer["spec"]["url"], ""
        note = ""
        spec = doc.get("spec", {})
        have = spec.get("traits") or {}
        roles = sorted(set(spec.get("roles") or []) | set(ROLES))
        if any(have.get(k) != v for k, v in traits.items()) or roles != sorted(spec.get("roles") or []):
            self._admin.put(f"/v1/users/{quote(self.user, safe='')}", {"roles": roles, "traits": traits})
            note = f"(user {self.user} now has roles {', '.join(roles)}, db user {self.user} and db name {DEMO})"
        state = (doc.get("status") or {}).get("state")
        if state in ("invited", "reset", "no password"):
            answer = self._admin.post(f"/v1/users/{quote(self.user, safe='')}/reset", {})
            return answer["spec"]["url"], note
        return None, note

    # --- 6. the agent --------------------------------------------------------------------
    def _agent_config(self, token: str | None) -> Path:
        import yaml

        from common.identity_file import write_private

        pin = self._admin.get("/v1/status")["ca_pin"]
        assert self.postgres is not None
        teleport: dict[str, Any] = {
            "nodename": "dev-agent",
            "data_dir": str(self.dev / "agent"),
            "proxy_server": self.listen,
            "ca_pin": [pin],
        }
        if token:
            teleport["join_params"] = {"join_method": "token", "token_name": token}
        doc = {
            "version": "v3",
            "teleport": teleport,
            "auth_service": {"enabled": False},
            "proxy_service": {"enabled": False},
            "db_service": {
                "enabled": True,
                "databases": [
                    {
                        "name": DEMO,
                        "description": f"pteleport dev: PostgreSQL {self.postgres.version()} on this machine",
                        "protocol": "postgres",
                        "uri": f"localhost:{self.postgres.port}",
                        "static_labels": {"env": "dev"},
                        "tls": {"ca_cert_file": str(self.dev / "db-ca.pem")},
                    }
                ],
            },
        }
        path = self.dev / "agent.yaml"
        header = "# pteleport dev: the database agent serving demo (written at every run)\n"
        write_private(path, (header + yaml.safe_dump(doc, sort_keys=False)).encode())
        return path

    def _start_agent(self) -> None:
        joined = (self.dev / "agent" / "host-identity.pem").exists()
        token = token_id = None
        if not joined:
            answer = self._admin.post("/v1/tokens", {"types": ["db"], "ttl_seconds": 900, "db_names": [DEMO]})
            token, token_id = answer["token"]["metadata"]["name"], answer["id"]
        config = self._agent_config(token)
        log = self.logs / "agent.log"
        offset = log.stat().st_size if log.exists() else 0
        child = self._spawn("database agent", ["start", "-c", str(config)], "agent.log")
        deadline = time.monotonic() + START_TIMEOUT
        # Ready: its tunnel to the proxy is up (its log says so) and the cluster holds its registration
        # (an earlier run's may still be there: only the log tells that this agent is connected).
        while not (_logged_since(log, offset, "connected to the proxy") and any(
            s["metadata"]["name"] == DEMO for s in self._admin.get("/v1/resources/db_servers")
        )):
            if child.exited() is not None:
                raise self._failed(child, "the database agent stopped")
            if time.monotonic() > deadline:
                raise InternalError(f"the database agent did not register {DEMO} within {START_TIMEOUT:.0f} s; "
                                        f"its log is {child.log_path}")
            time.sleep(0.3)
        if token:
            with contextlib.suppress(PteleportError):
                self._admin.delete(f"/v1/tokens/{token_id}")
            self._agent_config(None)  # the config on disk no longer holds the token

    # --- 7. what to run, and the wait ----------------------------------------------------
    def _print(self, link: str | None, note: str) -> None:
        assert self.postgres is not None
        addr = self.listen
        steps: list[tuple[str, list[str]]] = []
        if link:
            steps.append(("Sign up: set your password and enrol an authenticator app (or open the link in a "
                          "browser and accept its self-signed certificate):", [f"ptsh signup --insecure {link}"]))
        steps.append(("Log in:", [f"ptsh login --proxy={addr} --user={self.user} --insecure"]))
        steps.append(("Connect to the demo database:", [f"ptsh db connect {DEMO}"]))
        _say(f"pteleport dev: cluster at https://{addr}, database {DEMO} (PostgreSQL {self.postgres.version()} on "
             f"127.0.0.1:{self.postgres.port}, db user {self.user}).")
        _say(f"State: {self.data}; logs: {self.logs}. Ctrl+C stops everything.")
        if note:
            _say(note)
        _say()
        _say("In another shell:")
        for line in _shell_setup(self.data):
            _say(f"  {line}")
        for number, (what, commands) in enumerate(steps, 1):
            _say(f"{number}. {what}")
            for command in commands:
                _say(f"  {command}")
        _say()

    def _watch(self) -> None:
        while True:
            for child in self.children:
                if child.exited() is not None:
                    raise self._failed(child, f"the {child.name} stopped by itself")
            time.sleep(0.5)

    def _stop_all(self) -> None:
        for child in reversed(self.children):  # the agent, PostgreSQL, the cluster
            with contextlib.suppress(Exception):
                child.stop()
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
        if self._lock is not None:
            self._lock.close()


def _logged_since(log: Path, offset: int, text: str) -> bool:
    try:
        with open(log, "rb") as fh:
            fh.seek(offset)
            return text.encode() in fh.read()
    except OSError:
        return False


def _shell_setup(data: Path) -> list[str]:
    """What a second shell needs: the programs on PATH (when they live in a virtualenv), pctl's data dir."""
    import shlex

    lines = []
    if sys.prefix != sys.base_prefix:
        lines.append(f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"')
    lines.append(f"export PTELEPORT_DATA_DIR={shlex.quote(str(data))}")
    return lines


def _free_port(preferred: Any = None) -> int:
    """``preferred`` when it is free on 127.0.0.1 (the port of the last run), else any free port."""
    for port in ([int(preferred)] if isinstance(preferred, int) else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise InternalError("no free TCP port on 127.0.0.1 for PostgreSQL")


def _listen_addr(listen: str | None) -> str:
    from common.client import normalize_addr

    try:
        return normalize_addr(listen or DEFAULT_LISTEN)
    except UsageError as exc:
        raise UsageError(f"--listen {exc.message}") from None


def run_dev(data_dir: str | None, listen: str | None, user: str | None, pg_bindir: str | None) -> None:
    from common.paths import dev_data_dir

    data = Path(data_dir).resolve() if data_dir else dev_data_dir()
    DevCluster(data, _listen_addr(listen), user or getpass.getuser(), pg_bindir).run()
