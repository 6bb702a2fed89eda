"""`ptsh db connect`: psql through a local tunnel whose first session is opened before psql starts.

No Typer here: ``ptsh.entry`` runs it directly for the common forms of the command, and the
Typer command (``ptsh.db``) for the rest. See docs/design-notes.md ("`ptsh db connect` opens
the session before psql starts").

When the db user and db name are on the command line, psql is started at once, on a port
bound before anything else: it loads and dials while ptsh reads the profile and opens the
first session, and waits in the port's backlog. It is accepted only once that session is
open; if it cannot be opened, psql is killed before it printed anything, and the error and
its exit code are ptsh's, as when psql starts last.

The first session is opened and relayed without asyncio (``ptsh.firstsession``); the asyncio
tunnel starts only if psql opens a second connection (a cancel, ``\\connect``).
"""

from __future__ import annotations

import os
import socket
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def connect(database: str, db_user: str | None, db_name: str | None, proxy: str | None, psql_args: list[str]) -> int:
    """Open the session, then run psql on it; psql's exit code (errors raise a PteleportError).

    When a signal N ended psql, 128 + N.
    """
    path = _which("psql")
    if path is None:
        from common.errors import BadParameter

        raise BadParameter(
            f"psql was not found on PATH; install the PostgreSQL client, or run "
            f'"ptsh proxy db --tunnel {database}" and connect with any PostgreSQL client'
        )
    folder, sock = _private_socket()
    psql = _Psql(path, psql_args, folder)
    if db_user and db_name:
        psql.start(db_user, db_name)
    try:
        return _connect(database, db_user, db_name, proxy, psql, sock)
    except BaseException:
        psql.kill()  # (only before it may connect: it has printed nothing)
        raise
    finally:
        sock.close()
        for remove, name in ((os.unlink, os.path.join(folder, SOCKET_NAME)), (os.rmdir, folder)):
            try:
                remove(name)
            except OSError:
                pass


SOCKET_NAME = ".s.PGSQL.5432"  # what libpq looks for in a socket directory (port 5432)


def _private_socket() -> tuple[str, socket.socket]:
    """A Unix socket psql can reach and no other user can: in a new 0700 directory of our own.

    The session behind it carries the user's certificate, so a TCP port on 127.0.0.1 would
    let every local user in; a directory only its owner can enter does not (the same user's
    processes can read the key anyway).
    """
    # (mkdir of a new random name fails on anything already there, a symlink included, so a
    # shared /tmp is safe here; tempfile would cost an import of shutil and random.)
    base = os.environ.get("XDG_RUNTIME_DIR") or os.environ.get("TMPDIR") or "/tmp"  # noqa: S108
    folder = os.path.join(base, f"ptsh-{os.getpid()}-{os.urandom(6).hex()}")
    if not os.path.isdir(base) or len(os.path.join(folder, SOCKET_NAME)) > 100:  # (sun_path: 108 bytes)
        folder = os.path.join("/tmp", os.path.basename(folder))  # noqa: S108
    os.mkdir(folder, 0o700)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.path.join(folder, SOCKET_NAME))
        sock.listen(64)
    except OSError:
        sock.close()
        os.rmdir(folder)
        raise
    return folder, sock


def _connect(database: str, db_user: str | None, db_name: str | None, proxy: str | None, psql: _Psql,
             sock: socket.socket) -> int:
    import contextlib
    import signal

    from common.tlsctx import ALPN_POSTGRES, client_context
    from ptsh.firstsession import FirstSession, serve
    from ptsh.flags import GLOBALS, IDENTITY_FLAG
    from ptsh.pgstartup import ProxyTrouble, psql_startup, split_proxy_addr
    from ptsh.savedcert import certificate

    # The certificate of ``ptsh db login``, or else a new one, read and asked for without the
    # profile classes or httpx (``ptsh.savedcert``). When that quick path does not recognise
    # what it finds, the login and a certificate come from the full path, which has the
    # sentences for what is wrong.
    quick = proxy is None and GLOBALS["proxy"] is None and IDENTITY_FLAG["path"] is None
    saved = certificate(database, db_user, db_name) if quick else None
    full: list[Any] = []  # (login, DbCert) from the full path, once read

    def full_path(allow_expired: bool = False) -> tuple[Any, Any]:
        if not full:
            from ptsh.databases import DbCert, cert_for
            from ptsh.login_state import current_login

            login = current_login(proxy, allow_expired=allow_expired)
            if saved is None:
                dbcert = cert_for(login, database, db_user, db_name)
            else:  # the pair the first session has (the profile may hold a newer login by now)
                from dataclasses import replace
                from datetime import datetime

                login = replace(login, host_cas=saved.cas, _key=saved.key)
                expires = datetime.fromisoformat(saved.expires) if saved.expires else None
                dbcert = DbCert(saved.service, saved.db_user, saved.db_name, saved.cert, expires)
            full.extend((login, dbcert))
        return full[0], full[1]

    def relogin() -> str:
        if saved is not None:  # a profile's login (the quick path never reads identity files)
            from ptsh.login_state import login_command

            return f"run `{login_command(saved.proxy, user='')}`"
        from ptsh.databases import relogin_hint

        return relogin_hint(full_path()[0])

    if saved is not None:
        proxy_addr, cert, key, cas = saved.proxy, saved.cert, saved.key, saved.cas
        user, dbname = saved.db_user, saved.db_name
    else:
        login, dbcert = full_path()
        proxy_addr, cert, key, cas = login.proxy, dbcert.cert, login.key, login.host_cas
        user, dbname = dbcert.db_user, dbcert.db_name
    psql.start(user, dbname)  # (again, when the cluster named them differently: psql must ask for the certificate's)
    host, port = split_proxy_addr(proxy_addr)
    ctx = client_context(cas=cas, cert=cert, key=key, alpn=[ALPN_POSTGRES])
    session = FirstSession(host, port, ctx, ProxyTrouble(proxy_addr, relogin))
    # Before psql gets a connection: the proxy, the agent and the database answer, or the error and its exit code.
    terminal = sys.stdin.isatty() and sys.stdout.isatty()
    session.open(psql_startup(user, dbname, dict(os.environ), terminal))
    later: list[Any] = []  # the asyncio tunnel for psql's later connections, once there is one

    def more() -> None:
        """Serve psql's later connections with the asyncio tunnel (raises what stops it)."""
        from ptsh.databases import BackgroundTunnel

        # (An expired login still makes a tunnel: its refusals say what to do, as ErrorResponses.)
        tunnel = BackgroundTunnel(*full_path(allow_expired=True))
        later.append(tunnel)
        tunnel.start(sock=sock)

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is psql's: it sends a cancel
    pid, psql.pid, psql.names = psql.pid, 0, None  # from here on psql is the user's: never killed
    try:
        code = serve(sock, pid, session, more)
        return code if code >= 0 else 128 - code  # signal N ended psql: 128 + N, as a shell reports it
    finally:
        signal.signal(signal.SIGINT, previous)
        for tunnel in later:
            with contextlib.suppress(Exception):  # (psql has exited: its exit code is what is left to report)
                tunnel.stop()
            for message in tunnel.warnings[:1]:
                print(f"WARNING: {message}", file=sys.stderr, flush=True)


def socket_conninfo(user: str, folder: str, dbname: str) -> str:
    """What psql gets for ``ptsh db connect``'s tunnel: the Unix socket in ``folder`` (no TLS on it)."""
    parts = {"host": folder, "port": "5432", "user": user, "dbname": dbname, "sslmode": "disable"}
    return " ".join(f"{key}={conninfo_value(value)}" for key, value in parts.items())


def conninfo_value(value: str) -> str:
    """A libpq conninfo value, quoted when it must be."""
    if value and not any(c in value for c in " '\\"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def connection_url(user: str, port: int, dbname: str) -> str:
    """The URL psql gets for the local tunnel (plain TCP on 127.0.0.1)."""
    return f"postgres://{_quote(user)}@127.0.0.1:{port}/{_quote(dbname)}?sslmode=disable"


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


def _quote(text: str) -> str:
    """``urllib.parse.quote(text, safe="")`` (which would import more than the rest of this module)."""
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in text.encode())


def _which(name: str) -> str | None:
    """``shutil.which`` for a bare command name (importing shutil costs more than this search)."""
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(folder or ".", name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


class _Psql:
    """psql, started on the tunnel's socket as soon as the db user and name are known."""

    def __init__(self, path: str, args: list[str], folder: str) -> None:
        self.path, self.args, self.folder = path, args, folder
        self.pid = 0
        self.names: tuple[str, str] | None = None

    def start(self, user: str, dbname: str) -> None:
        """Start psql for these names, unless it runs for them already (else it is restarted)."""
        if self.names == (user, dbname):
            return
        self.kill()
        argv = [self.path, socket_conninfo(user, self.folder, dbname), *self.args]
        self.pid, self.names = _spawn(argv), (user, dbname)

    def kill(self) -> None:
        """Stop a psql that has not connected yet (it has printed nothing)."""
        pid, self.pid, self.names = self.pid, 0, None
        if not pid:
            return
        import signal

        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass  # already gone, and reaped


def _spawn(argv: list[str]) -> int:
    """Start psql with this process's environment and standard streams; its pid.

    Python ignores SIGPIPE, and an ignored signal stays ignored across exec: psql gets the
    defaults back, as ``subprocess`` gives them (``restore_signals``).
    """
    import signal

    return os.posix_spawn(argv[0], argv, os.environ, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
