"""A real PostgreSQL for tests and benchmarks, started from the system binaries.

``PgServer.start()`` runs ``initdb`` and ``pg_ctl`` in a fresh directory under /tmp, with
TLS on (a throwaway CA signs the server certificate for ``localhost`` and ``127.0.0.1``),
TCP on 127.0.0.1 only and a private Unix socket directory. PostgreSQL refuses to run as
root, so when the tests run as root (CI) every server command runs as the unprivileged
``postgres`` user through ``runuser``, in directories that user owns.

pg_hba.conf routes by group role: members of ``pt_cert`` log in with a client certificate,
``pt_scram``/``pt_md5``/``pt_password`` with those password methods (all over TLS),
``pt_trust`` without credentials; everything else over TCP is rejected. ``create_role``
puts a new role in the right group.

``add_hba`` adds lines of a suite's own (e.g. the conformance harness's) ahead of the final
reject lines; ``start(extra_listen=["::1"])`` also listens on IPv6 loopback, so a test can give
one path (direct, from ::1) and another (an agent, from 127.0.0.1) different pg_hba rules.

The pytest fixture ``pg`` (session scope) starts one server for the run and always stops it.
Tests that take the server down (``restart``, ``pause``/``resume``) start their own with
``PgServer.start()``, so the shared one stays up for everyone else.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_USER = "postgres"  # the unprivileged OS user that runs the server when we are root
SUPERUSER = "postgres"  # the database superuser initdb creates
AUTH_GROUPS = {
    "cert": "pt_cert",
    "scram": "pt_scram",
    "md5": "pt_md5",
    "password": "pt_password",
    "trust": "pt_trust",
}
_FALLBACK_BINDIR = "/usr/lib/postgresql/15/bin"


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class ThrowawayCA:
    """A throwaway CA for tests: ``issue`` returns (cert PEM, key PEM)."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str) -> ThrowawayCA:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, common_name: str, sans: list[str] | None = None, server: bool = False) -> tuple[bytes, bytes]:
        """A leaf certificate. ``sans`` (DNS names or IPs) are omitted entirely when ``None``."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if sans is not None:
            names: list[x509.GeneralName] = []
            for name in sans:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(name)))
                except ValueError:
                    names.append(x509.DNSName(name))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bindir() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    return Path(_FALLBACK_BINDIR)


def _quote(value: str) -> str:
    """A postgresql.conf string literal."""
    return "'" + value.replace("'", "''") + "'"


class PgServer:
    """One PostgreSQL server in its own directory. Use ``start`` / ``stop``."""

    host = "127.0.0.1"

    def __init__(self, root: Path, port: int, as_root: bool, extra_listen: tuple[str, ...] = ()) -> None:
        self.root = root
        self.extra_listen = extra_listen
        self.port = port
        self.data_dir = str(root / "data")
        self.socket_dir = str(root / "run")
        self.tls_dir = root / "tls"
        self.log_file = str(root / "postgres.log")
        self.client_ca_file = str(self.tls_dir / "client-ca.pem")
        self.server_cert_file = str(self.tls_dir / "server.crt")
        self.server_key_file = str(self.tls_dir / "server.key")
        self.ca_cert_file = str(self.tls_dir / "server-ca.pem")
        self._original_ca_cert_file = self.ca_cert_file
        self._original_server_cert: tuple[bytes, bytes] | None = None
        self._as_root = as_root
        self._owner = pwd.getpwnam(SERVER_USER) if as_root else None
        self._bindir = _bindir()
        self._running = False
        self._cert_generation = 0
        self.server_ca: ThrowawayCA | None = None

    # ----- lifecycle -------------------------------------------------------------------

    @classmethod
    def start(
        cls, base_dir: str | os.PathLike[str] | None = None, extra_listen: tuple[str, ...] | list[str] = ()
    ) -> PgServer:
        """initdb, configure TLS and pg_hba.conf, start, create the auth group roles.

        ``extra_listen``: addresses to listen on besides 127.0.0.1 (e.g. ``["::1"]``).
        """
        as_root = os.geteuid() == 0
        parent = Path(base_dir) if base_dir is not None else Path(tempfile.gettempdir())
        if as_root and not _traversable_by_others(parent):
            parent = Path("/tmp")
        root = Path(tempfile.mkdtemp(prefix="pteleport-pg-", dir=parent))
        os.chmod(root, 0o755)
        server = cls(root, _free_port(), as_root, tuple(extra_listen))
        try:
            server._init()
            server._start()
            atexit.register(server.stop)
        except BaseException:
            server.stop()
            raise
        return server

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its directory. Safe to call twice."""
        if self._running or Path(self.data_dir, "postmaster.pid").exists():
            self._running = False
            result = self._run(
                [self._bin("pg_ctl"), "-D", self.data_dir, "-m", "fast", "-w", "-t", "20", "stop"],
                check=False,
            )
            if result.returncode != 0:
                self._kill_postmaster()
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(Path(self.data_dir, "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGQUIT)
            for _ in range(50):
                os.kill(pid, 0)
                time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)

    def _init(self) -> None:
        for sub in ("data", "run", "tls"):
            path = self.root / sub
            path.mkdir(mode=0o700 if sub == "data" else 0o755)
            self._own(path)
        self._own(self.root)
        self._run(
            [
                self._bin("initdb"),
                "-D",
                self.data_dir,
                "-U",
                SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ]
        )
        self.server_ca = ThrowawayCA.create("pteleport test server CA")
        cert, key = self.server_ca.issue("localhost", ["localhost", "127.0.0.1"], server=True)
        self._original_server_cert = (cert, key)
        self._write(self.ca_cert_file, self.server_ca.cert_pem, 0o644)
        self._write(self.server_cert_file, cert, 0o644)
        self._write(self.server_key_file, key, 0o600)
        # PostgreSQL refuses an empty ssl_ca_file: seed it with a CA whose key is thrown away.
        self._write(self.client_ca_file, ThrowawayCA.create("placeholder client CA").cert_pem, 0o644)
        settings = {
            "listen_addresses": ",".join(["127.0.0.1", *self.extra_listen]),
            "port": str(self.port),
            "unix_socket_directories": self.socket_dir,
            "ssl": "on",
            "ssl_cert_file": self.server_cert_file,
            "ssl_key_file": self.server_key_file,
            "ssl_ca_file": self.client_ca_file,
            "ssl_min_protocol_version": "TLSv1.2",
            "password_encryption": "scram-sha-256",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "600",
            "logging_collector": "off",
        }
        conf = "".join(f"{name} = {_quote(value)}\n" for name, value in settings.items())
        with open(Path(self.data_dir, "postgresql.conf"), "a", encoding="utf-8") as fh:
            fh.write("\n# pteleport tests\n" + conf)
        hba = [
            "local all all trust",
            "hostssl all +pt_cert 127.0.0.1/32 cert",
            "hostssl all +pt_scram 127.0.0.1/32 scram-sha-256",
            "hostssl all +pt_md5 127.0.0.1/32 md5",
            "hostssl all +pt_password 127.0.0.1/32 password",
            "host all +pt_trust 127.0.0.1/32 trust",
            "host all all 0.0.0.0/0 reject",
            "host all all ::/0 reject",
        ]
        Path(self.data_dir, "pg_hba.conf").write_text("\n".join(hba) + "\n", encoding="utf-8")

    def _start(self) -> None:
        self._run(
            [self._bin("pg_ctl"), "-D", self.data_dir, "-l", self.log_file, "-w", "-t", "30", "start"],
            log_on_error=True,
        )
        self._running = True
        groups = "; ".join(f"CREATE ROLE {group} NOLOGIN" for group in AUTH_GROUPS.values())
        self.execute(groups)

    # ----- helpers for tests -----------------------------------------------------------

    def execute(self, sql: str, dbname: str = "postgres") -> list[tuple]:
        """Run ``sql`` as the superuser over the Unix socket; the rows of the last statement."""
        import psycopg

        with psycopg.connect(self.superuser_dsn(dbname), autocommit=True) as conn:
            cur = conn.execute(sql.encode("utf-8"))
            while cur.nextset():
                pass
            return cur.fetchall() if cur.description else []

    def superuser_dsn(self, dbname: str = "postgres") -> str:
        """libpq conninfo for the superuser over the Unix socket."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(host=self.socket_dir, port=self.port, user=SUPERUSER, dbname=dbname)

    def dsn(
        self,
        user: str,
        dbname: str = "postgres",
        password: str | None = None,
        sslmode: str = "verify-full",
        sslcert: str | None = None,
        sslkey: str | None = None,
    ) -> str:
        """A libpq conninfo string for a TCP + TLS connection to this server."""
        parts = {
            "host": "localhost",
            "port": str(self.port),
            "user": user,
            "dbname": dbname,
            "sslmode": sslmode,
            "sslrootcert": self.ca_cert_file,
        }
        if password is not None:
            parts["password"] = password
        if sslcert and sslkey:
            parts["sslcert"], parts["sslkey"] = sslcert, sslkey
        from psycopg.conninfo import make_conninfo

        return make_conninfo(**parts)

    def psql_env(self) -> dict[str, str]:
        """Environment for ``psql`` as the superuser over the Unix socket."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env.update(PGHOST=self.socket_dir, PGPORT=str(self.port), PGUSER=SUPERUSER, PGDATABASE="postgres")
        return env

    def create_role(self, name: str, auth: str, password: str | None = None, superuser: bool = False) -> None:
        """Create (or redefine) a login role that authenticates with ``auth``."""
        from psycopg import sql

        if auth not in AUTH_GROUPS:
            raise ValueError(f"auth must be one of {sorted(AUTH_GROUPS)}, not {auth!r}")
        if auth in ("scram", "md5", "password") and password is None:
            raise ValueError(f"auth {auth!r} needs a password")
        import psycopg

        role = sql.Identifier(name)
        with psycopg.connect(self.superuser_dsn(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("SET password_encryption = {}").format(sql.Literal("md5" if auth == "md5" else "scram-sha-256"))
            )
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            verb = sql.SQL("ALTER ROLE" if exists else "CREATE ROLE")
            options = sql.SQL("LOGIN SUPERUSER" if superuser else "LOGIN NOSUPERUSER")
            secret = sql.SQL("PASSWORD {}").format(sql.Literal(password)) if password else sql.SQL("PASSWORD NULL")
            conn.execute(sql.SQL("{} {} {} {}").format(verb, role, options, secret))
            for group in AUTH_GROUPS.values():
                conn.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(group), role))
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(AUTH_GROUPS[auth]), role))

    def add_hba(self, lines: list[str]) -> None:
        """Add pg_hba.conf lines just before the final ``reject`` lines, and reload.

        They come after the group-role lines, so they apply to roles in no ``pt_*`` group
        (and to every role for addresses the group lines do not cover, such as ::1).
        """
        path = Path(self.data_dir, "pg_hba.conf")
        current = path.read_text(encoding="utf-8").splitlines()
        at = next((i for i, line in enumerate(current) if line.startswith("host all all") and "reject" in line),
                  len(current))
        path.write_text("\n".join([*current[:at], *lines, *current[at:]]) + "\n", encoding="utf-8")
        self.reload()

    def trust_client_ca(self, pem: bytes) -> None:
        """Add a CA to ssl_ca_file, so client certificates it signs are accepted, and reload."""
        current = Path(self.client_ca_file).read_bytes()
        if pem.strip() not in current:
            self._write(self.client_ca_file, current.rstrip(b"\n") + b"\n" + pem, 0o644)
        self.reload()

    def set_server_cert(self, cert_pem: bytes, key_pem: bytes, ca_pem: bytes) -> None:
        """Serve a different certificate; ``ca_cert_file`` then holds ``ca_pem``."""
        self._cert_generation += 1
        ca_file = str(self.tls_dir / f"server-ca-{self._cert_generation}.pem")
        self._write(ca_file, ca_pem, 0o644)
        self._write(self.server_cert_file, cert_pem, 0o644)
        self._write(self.server_key_file, key_pem, 0o600)
        self.ca_cert_file = ca_file
        self.reload()

    def restore_server_cert(self) -> None:
        """Go back to the certificate the server started with."""
        assert self._original_server_cert is not None
        cert, key = self._original_server_cert
        self._write(self.server_cert_file, cert, 0o644)
        self._write(self.server_key_file, key, 0o600)
        self.ca_cert_file = self._original_ca_cert_file
        self.reload()

    def pause(self) -> None:
        """Stop the server (fast shutdown: every client connection is cut) but keep its files."""
        self._run([self._bin("pg_ctl"), "-D", self.data_dir, "-m", "fast", "-w", "-t", "30", "stop"])
        self._running = False

    def resume(self) -> None:
        """Start a paused server again, on the same port with the same data."""
        self._run(
            [self._bin("pg_ctl"), "-D", self.data_dir, "-l", self.log_file, "-w", "-t", "30", "start"],
            log_on_error=True,
        )
        self._running = True

    def restart(self) -> None:
        """``pg_ctl restart`` (fast): what an operator or a failover does to the clients."""
        self._run(
            [self._bin("pg_ctl"), "-D", self.data_dir, "-l", self.log_file, "-m", "fast", "-w", "-t", "30", "restart"],
            log_on_error=True,
        )
        self._running = True

    def reload(self) -> None:
        """Re-read the configuration and TLS files (new connections see the change)."""
        self.execute("SELECT pg_reload_conf()")

    # ----- internals -------------------------------------------------------------------

    def _bin(self, name: str) -> str:
        return str(self._bindir / name)

    def _own(self, path: Path | str) -> None:
        if self._owner is not None:
            os.chown(path, self._owner.pw_uid, self._owner.pw_gid)

    def _write(self, path: str, data: bytes, mode: int) -> None:
        tmp = f"{path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        self._own(tmp)
        os.replace(tmp, path)

    def _run(self, argv: list[str], check: bool = True, log_on_error: bool = False) -> subprocess.CompletedProcess[str]:
        if self._as_root:
            argv = ["runuser", "-u", SERVER_USER, "--", *argv]
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        result = subprocess.run(argv, cwd=self.root, env=env, capture_output=True, text=True, timeout=60, check=False)
        if check and result.returncode != 0:
            log = ""
            if log_on_error:
                with contextlib.suppress(OSError):
                    log = Path(self.log_file).read_text(errors="replace")[-4000:]
            raise RuntimeError(
                f"{' '.join(argv)} failed with exit code {result.returncode}:\n{result.stdout}\n{result.stderr}\n{log}"
            )
        return result


def _traversable_by_others(path: Path) -> bool:
    """True if every directory from / down to ``path`` lets other users through (o+x)."""
    path = path.resolve()
    for part in [path, *path.parents]:
        try:
            if not part.stat().st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    """One PostgreSQL 15 server with TLS for the whole test session."""
    if not (_bindir() / "initdb").exists():
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    server = PgServer.start()
    try:
        yield server
    finally:
        server.stop()
