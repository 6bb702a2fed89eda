"""`ptsh proxy db --tunnel NAME`: a long-running local tunnel for GUI clients and scripts."""

from __future__ import annotations

from typing import Annotated

import typer

from common.cli import eprint

proxy_app = typer.Typer(help="Run local proxies to cluster resources.", no_args_is_help=True)


@proxy_app.command("db")
def proxy_db(
    database: Annotated[str, typer.Argument(help="Database name (see ptsh db ls).")],
    tunnel: Annotated[
        bool, typer.Option("--tunnel", help="Terminate TLS locally: clients connect in plain text on 127.0.0.1.")
    ] = False,
    port: Annotated[int, typer.Option("--port", "-p", help="Local port (default: a free one).", min=0, max=65535)] = 0,
    db_user: Annotated[str | None, typer.Option("--db-user", "-u")] = None,
    db_name: Annotated[str | None, typer.Option("--db-name", "-n")] = None,
    proxy: Annotated[str | None, typer.Option("--proxy", help="Which logged-in proxy to use.")] = None,
) -> None:
    """Start a local authenticated tunnel to a database (stop it with Ctrl+C)."""
    from common.errors import UsageError
    from ptsh.databases import connection_url, run_tunnel
    from ptsh.login_state import current_login
    from ptsh.tunnel import run

    if not tunnel:
        raise UsageError("only --tunnel mode is supported: ptsh proxy db --tunnel " + database)
    login = current_login(proxy)

    def announce(cert, bound: int) -> None:  # type: ignore[no-untyped-def]
        print(
            f'Started authenticated tunnel for the PostgreSQL database "{database}" in cluster '
            f'"{login.cluster}" on 127.0.0.1:{bound}.\n\n'
            f"Use the following command to connect to the database or to the address above using other "
            f"database GUI/CLI clients:\n\n  psql '{connection_url(cert.db_user, bound, cert.db_name)}'\n",
            flush=True,
        )

    try:
        run(run_tunnel(login, database, db_user, db_name, port, announce))
    except KeyboardInterrupt:
        eprint("tunnel closed")
    except OSError as exc:
        from common.errors import BadParameter

        raise BadParameter(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}; pick another --port") from None
