"""The PostgreSQL of `pteleport dev`: the system's binaries, TLS from the cluster's db CA.

PostgreSQL refuses to run as root, so when `pteleport dev` runs as root the server runs as
the unprivileged ``postgres`` user (else ``nobody``) in directories that user owns. Its
root directory holds:

- ``data/``: what initdb made; ``pg_hba.conf`` is ours: the superuser over the private Unix
  socket only, everyone else over TLS with a client certificate (``hostssl ... cert``);
- ``run/``: the Unix socket, mode 0700;
- ``tls/``: ``server.crt``/``server.key``, a server certificate the db CA signed, and
  ``client-ca.pem``, the db client CA (``ssl_ca_file``): the certificates the database agent
  presents as the db user are signed by it.

The settings that can change between runs (port, TLS files) are given on the command line at
every start; nothing else is edited after initdb.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from common.errors import BadParameter, InternalError
from pteleport.dev.children import Child

SUPERUSER = "postgres"
NEEDED = ("initdb", "postgres")
SEARCH = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin", "/opt/homebrew/opt/postgresql*/bin")
INSTALL = (
    "PostgreSQL's server programs (initdb, postgres) were not found on PATH or in /usr/lib/postgresql/*/bin; "
    "install them (Debian and Ubuntu: apt-get install postgresql; Fedora: dnf install postgresql-server; "
    "macOS: brew install postgresql), or pass --pg-bindir with the directory that holds them"
)
SAMPLE = """
CREATE TABLE IF NOT EXISTS greetings (id int PRIMARY KEY, language text NOT NULL, greeting text NOT NULL);
INSERT INTO greetings VALUES (1, 'English', 'Hello'), (2, 'French', 'Bonjour'), (3, 'Finnish', 'Hei')
ON CONFLICT (id) DO NOTHING;
"""


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path)) or (0,)


def find_bindir(explicit: str | None = None, path: str | None = None, search: tuple[str, ...] = SEARCH) -> Path:
    """The directory with initdb and postgres: ``explicit``, else on PATH, else the newest packaged one."""
    if explicit:
        folder = Path(explicit)
        missing = [name for name in NEEDED if not (folder / name).is_file()]
        if missing:
            raise BadParameter(f"--pg-bindir {explicit} has no {' or '.join(missing)}; pass the directory of "
                               "PostgreSQL's server programs (e.g. /usr/lib/postgresql/15/bin)")
        return folder
    for entry in (path if path is not None else os.environ.get("PATH", "")).split(os.pathsep):
        if entry and all(os.access(Path(entry, name), os.X_OK) for name in NEEDED):
            return Path(entry).resolve()
    found = [d for pattern in search for d in glob.glob(pattern) if all(Path(d, n).is_file() for n in NEEDED)]
    if found:
        return Path(max(found, key=_version_key))
    raise BadParameter(INSTALL)


def server_user() -> Any:
    """The OS user the server runs as when we are root (a pwd entry), else None (ourselves)."""
    if os.geteuid() != 0:
        return None
    import pwd

    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise BadParameter(
        "PostgreSQL refuses to run as root and this machine has no postgres or nobody user to run it as; "
        "run pteleport dev as an ordinary user"
    )


def reachable_by_others(path: Path) -> bool:
    """True if every directory down to ``path`` lets other users through (o+x)."""
    for part in [path.resolve(), *path.resolve().parents]:
        try:
            if not part.stat().st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


class DevPostgres:
    """One PostgreSQL server in ``root`` (see the module's docstring), run as ``owner``."""

    def __init__(self, root: Path, bindir: Path, owner: Any, log_path: Path) -> None:
        self.root = root
        self.bindir = bindir
        self.owner = owner
        self.log_path = log_path
        self.data = root / "data"
        self.run_dir = root / "run"
        self.tls = root / "tls"
        self.port = 0
        self.child: Child | None = None

    @property
    def initialized(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def version(self) -> str:
        out = subprocess.run([str(self.bindir / "postgres"), "--version"], capture_output=True, text=True, check=False)
        match = re.search(r"\d+(\.\d+)?", out.stdout)
        return match.group(0) if match else "?"

    # --- files ---------------------------------------------------------------------------
    def _own(self, path: Path) -> None:
        if self.owner is not None:
            os.chown(path, self.owner.pw_uid, self.owner.pw_gid)

    def _write(self, path: Path, data: bytes, mode: int) -> None:
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        self._own(tmp)
        os.replace(tmp, path)

    def init(self) -> None:
        """initdb (as the server's user), and our pg_hba.conf."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o755)
        for folder, mode in ((self.data, 0o700), (self.run_dir, 0o700), (self.tls, 0o700)):
            folder.mkdir(exist_ok=True, mode=mode)
            os.chmod(folder, mode)
            self._own(folder)
        if not self.initialized:
            self._run_as_owner(
                [str(self.bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
                 "--no-locale", "--no-instructions"]
            )
        hba = [
            "# pteleport dev: the superuser over the private Unix socket (its directory is 0700);",
            "# everyone else over TLS with a client certificate from the cluster's db client CA.",
            "local   all all              trust",
            "hostssl all all 127.0.0.1/32 cert",
            "hostssl all all ::1/128      cert",
            "host    all all 0.0.0.0/0    reject",
            "host    all all ::/0         reject",
        ]
        self._write(self.data / "pg_hba.conf", ("\n".join(hba) + "\n").encode(), 0o600)

    def write_tls(self, cert: bytes, key: bytes, client_ca: bytes) -> None:
        self._write(self.tls / "server.crt", cert, 0o644)
        self._write(self.tls / "server.key", key, 0o600)
        self._write(self.tls / "client-ca.pem", client_ca, 0o644)

    def _run_as_owner(self, argv: list[str]) -> None:
        extra: dict[str, Any] = {}
        if self.owner is not None:
            extra.update(user=self.owner.pw_uid, group=self.owner.pw_gid, extra_groups=[])
        result = subprocess.run(argv, capture_output=True, text=True, env=_server_env(), cwd=self.root,
                                timeout=120, check=False, **extra)
        if result.returncode != 0:
            last = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["no output"]
            raise BadParameter(f"{Path(argv[0]).name} failed (exit {result.returncode}): {last[0]}")

    # --- running -----------------------------------------------------------------------
    def start(self, port: int) -> None:
        self.port = port
        settings = {
            "port": str(port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.run_dir),
            "unix_socket_permissions": "0700",
            "ssl": "on",
            "ssl_cert_file": str(self.tls / "server.crt"),
            "ssl_key_file": str(self.tls / "server.key"),
            "ssl_ca_file": str(self.tls / "client-ca.pem"),
            "ssl_min_protocol_version": "TLSv1.2",
            "logging_collector": "off",
        }
        argv = [str(self.bindir / "postgres"), "-D", str(self.data)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        # SIGINT is PostgreSQL's fast shutdown: sessions end, nothing is lost.
        self.child = Child("PostgreSQL", argv, self.log_path, stop_signal=signal.SIGINT, user=self.owner,
                           env=_server_env(), cwd=self.root)
        self.child.start()
        self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            assert self.child is not None
            code = self.child.exited()
            if code is not None:
                raise InternalError(
                    f"PostgreSQL stopped at start (exit {code}): {self.child.problem()}; its log is {self.log_path}"
                )
            try:
                with psycopg.connect(self.superuser_dsn(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise InternalError(
                        f"PostgreSQL did not accept connections within {timeout:.0f} s; its log is {self.log_path}"
                    ) from None
                time.sleep(0.2)

    def superuser_dsn(self, dbname: str = "postgres") -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(host=str(self.run_dir), port=self.port, user=SUPERUSER, dbname=dbname)

    def ensure_demo(self, db_user: str, dbname: str) -> None:
        """The db user (a login role, no password: it logs in with a certificate) and the sample database."""
        import psycopg
        from psycopg import sql

        role, db = sql.Identifier(db_user), sql.Identifier(dbname)
        with psycopg.connect(self.superuser_dsn(), autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (db_user,)).fetchone():
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(db, role))
        with psycopg.connect(self.superuser_dsn(dbname), autocommit=True) as conn:
            conn.execute(sql.SQL("SET ROLE {}").format(role))
            conn.execute(SAMPLE)

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(timeout=30)


def _server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    return env
