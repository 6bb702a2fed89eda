"""`ptsh db connect`: psql through a local tunnel whose first session is opened before psql starts.

No Typer here: ``ptsh.entry`` runs it directly for the common forms of the command, and the
Typer command (``ptsh.db``) for the rest. See docs/design-notes.md ("`ptsh db connect` opens
the session before psql starts").

When the db user and db name are on the command line, psql is started at once, on a port
bound before anything else: it loads and dials while ptsh reads the profile and opens the
first session, and waits in the port's backlog. The tunnel accepts it only once that
session is open; if it cannot be opened, psql is killed before it printed anything, and the
error and its exit code are ptsh's, as when psql starts last.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any


def connect(database: str, db_user: str | None, db_name: str | None, proxy: str | None, psql_args: list[str]) -> int:
    """Open the session, then run psql on it; psql's exit code (errors raise a PteleportError)."""
    import shutil

    from common.errors import BadParameter

    psql = shutil.which("psql")
    if psql is None:
        raise BadParameter(
            f"psql was not found on PATH; install the PostgreSQL client, or run "
            f'"ptsh proxy db --tunnel {database}" and connect with any PostgreSQL client'
        )
    early: Any = None
    sock: socket.socket | None = None
    if db_user and db_name:
        sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        early = _spawn([psql, connection_url(db_user, sock.getsockname()[1], db_name), *psql_args])
    try:
        return _connect(database, db_user, db_name, proxy, psql, psql_args, early, sock)
    except BaseException:
        if early is not None and early.poll() is None:
            early.kill()  # still waiting for its connection: it has printed nothing
            early.wait()
        raise
    finally:
        if sock is not None:
            sock.close()


def _connect(database: str, db_user: str | None, db_name: str | None, proxy: str | None, psql: str,
             psql_args: list[str], early: Any, sock: socket.socket | None) -> int:
    from ptsh.databases import BackgroundTunnel, cert_for, psql_startup
    from ptsh.login_state import current_login

    login = current_login(proxy)
    cert = cert_for(login, database, db_user, db_name)
    if early is not None and (cert.db_user, cert.db_name) != (db_user, db_name):
        early.kill()  # the cluster named them differently: psql must ask for the certificate's
        early.wait()
        early = None
    tunnel = BackgroundTunnel(login, cert)
    tunnel.begin()
    try:
        # Before psql gets a connection: the proxy, the agent and the database answer, or the error and its exit code.
        terminal = sys.stdin.isatty() and sys.stdout.isatty()
        tunnel.preflight(psql_startup(cert.db_user, cert.db_name, dict(os.environ), terminal))
        if early is not None:
            tunnel.start(sock=sock)
            return _wait(early)
        port = tunnel.start()
        return _wait(_spawn([psql, connection_url(cert.db_user, port, cert.db_name), *psql_args]))
    finally:
        tunnel.stop()
        for message in tunnel.warnings[:1]:
            print(f"WARNING: {message}", file=sys.stderr, flush=True)


def connection_url(user: str, port: int, dbname: str) -> str:
    """The URL psql gets for the local tunnel (plain TCP on 127.0.0.1)."""
    from urllib.parse import quote

    return f"postgres://{quote(user, safe='')}@127.0.0.1:{port}/{quote(dbname, safe='')}?sslmode=disable"


def _spawn(argv: list[str]) -> Any:
    import subprocess

    return subprocess.Popen(argv)


def _wait(process: Any) -> int:
    """Wait for psql in the foreground; Ctrl+C belongs to psql (it sends a cancel through the tunnel)."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return process.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
