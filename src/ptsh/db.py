"""`ptsh db ls | login | logout | connect | env | config`: Typer commands (thin)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from common.cli import FORMAT_OPTION, Format, eprint, render

db_app = typer.Typer(help="View and connect to databases.", no_args_is_help=True)

DbUserOpt = Annotated[str | None, typer.Option("--db-user", "-u", help="Database user to log in as.")]
DbNameOpt = Annotated[str | None, typer.Option("--db-name", "-n", help="Database name to connect to.")]
ProxyOpt = Annotated[str | None, typer.Option("--proxy", help="Which logged-in proxy to use.")]
DEFAULT_TUNNEL_PORT = 15432


def _login(proxy: str | None) -> Any:
    from ptsh.login_state import current_login

    return current_login(proxy)


def _labels_arg(text: str | None) -> dict[str, str]:
    from common.errors import UsageError

    labels: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise UsageError(f'"{part}" is not a label selector; use key=value[,key2=value2]')
        labels[key] = value
    return labels


@db_app.command("ls")
def db_ls(
    labels: Annotated[str | None, typer.Argument(help="Label selector: k=v[,k2=v2].")] = None,
    search: Annotated[str | None, typer.Option("--search", help="Comma-separated words to look for.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More columns, all labels.")] = False,
    fmt: Format = FORMAT_OPTION,
    proxy: ProxyOpt = None,
) -> None:
    """List the databases your roles allow."""
    from ptsh.databases import DB_LS_HINT, db_table, filter_databases, list_databases

    login = _login(proxy)
    words = [w for w in (search or "").replace(",", " ").split() if w]
    dbs = filter_databases(list_databases(login), _labels_arg(labels), words)
    if fmt != Format.text:
        render(dbs, fmt)
        return
    print(db_table(login, dbs, verbose))
    if len(dbs) >= 20 and not (labels or search):
        eprint(DB_LS_HINT)


@db_app.command("login")
def db_login(
    database: Annotated[str, typer.Argument(help="Database name (see ptsh db ls).")],
    db_user: DbUserOpt = None,
    db_name: DbNameOpt = None,
    proxy: ProxyOpt = None,
) -> None:
    """Get a certificate for a database and remember which user and name to use."""
    from ptsh.databases import issue_db_cert, save_db_cert

    login = _login(proxy)
    cert = issue_db_cert(login, database, db_user or "", db_name or "")
    if login.profile is None:
        eprint("note: with an identity file nothing is saved; use ptsh db connect or ptsh proxy db directly")
        return
    save_db_cert(login, cert)
    print(
        f'Connection information for database "{database}" has been saved.\n\n'
        f"You can now connect to it using the following command:\n\n  ptsh db connect {database}\n\n"
        f"or, for GUI clients, start a local tunnel:\n\n  ptsh proxy db --tunnel {database}\n"
    )


@db_app.command("logout")
def db_logout(
    database: Annotated[str | None, typer.Argument(help="Database name; all when omitted.")] = None,
    proxy: ProxyOpt = None,
) -> None:
    """Forget database certificates."""
    from ptsh.databases import logout_databases

    names = logout_databases(_login(proxy), database)
    for name in names:
        print(f"Logged out of database {name}")


@db_app.command("connect", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def db_connect(
    ctx: typer.Context,
    database: Annotated[str, typer.Argument(help="Database name (see ptsh db ls).")],
    db_user: DbUserOpt = None,
    db_name: DbNameOpt = None,
    proxy: ProxyOpt = None,
) -> int:
    """Open psql on a database through a local authenticated tunnel.

    Arguments after -- go to psql: ptsh db connect aurora -- -c 'select 1'
    """
    from ptsh.connect import connect

    return connect(database, db_user, db_name, proxy, list(ctx.args))


def _config(login: Any, database: str, db_user: str | None, db_name: str | None, port: int) -> dict[str, Any]:
    from ptsh.databases import saved_db_cert

    saved = saved_db_cert(login, database)
    user = db_user or (saved.db_user if saved else "")
    name = db_name or (saved.db_name if saved else "")
    if not user or not name:
        from common.errors import BadParameter

        raise BadParameter(f'run "ptsh db login {database}" first, or pass --db-user and --db-name')
    return {"name": database, "host": "127.0.0.1", "port": port, "user": user, "database": name}


@db_app.command("env")
def db_env(
    database: Annotated[str, typer.Argument(help="Database name.")],
    port: Annotated[
        int, typer.Option("--port", "-p", help="Port of your local tunnel.", min=1, max=65535)
    ] = DEFAULT_TUNNEL_PORT,
    db_user: DbUserOpt = None,
    db_name: DbNameOpt = None,
    fmt: Format = FORMAT_OPTION,
    proxy: ProxyOpt = None,
) -> None:
    """Print PG* environment variables for a local tunnel to a database."""
    cfg = _config(_login(proxy), database, db_user, db_name, port)
    env = {
        "PGHOST": cfg["host"],
        "PGPORT": str(cfg["port"]),
        "PGUSER": cfg["user"],
        "PGDATABASE": cfg["database"],
        "PGSSLMODE": "disable",
        "PGGSSENCMODE": "disable",
    }
    if fmt != Format.text:
        render(env, fmt)
        return
    import shlex

    print(f"# start the tunnel first: ptsh proxy db --tunnel --port {port} {database}")
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")


@db_app.command("config")
def db_config(
    database: Annotated[str, typer.Argument(help="Database name.")],
    port: Annotated[
        int, typer.Option("--port", "-p", help="Port of your local tunnel.", min=1, max=65535)
    ] = DEFAULT_TUNNEL_PORT,
    db_user: DbUserOpt = None,
    db_name: DbNameOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="text, cmd, json or yaml.")] = "text",
    proxy: ProxyOpt = None,
) -> None:
    """Print how to connect to a database through a local tunnel."""
    from common.errors import UsageError
    from ptsh.databases import connection_url, direct_connection

    login = _login(proxy)
    cfg = _config(login, database, db_user, db_name, port)
    direct = direct_connection(login, database, cfg["user"], cfg["database"])
    if fmt in ("json", "yaml"):
        render({**cfg, "direct": direct}, fmt)
    elif fmt == "cmd":
        print(f"psql '{connection_url(cfg['user'], port, cfg['database'])}'")
    elif fmt == "text":
        print(
            f"Name:     {cfg['name']}\nHost:     {cfg['host']}\nPort:     {cfg['port']}\n"
            f"User:     {cfg['user']}\nDatabase: {cfg['database']}\n"
            f"Tunnel:   ptsh proxy db --tunnel --port {port} {database}"
        )
        if direct is not None:
            print(f"Direct:   psql \"{direct['dsn']}\"")
    else:
        raise UsageError(f'--format must be text, cmd, json or yaml (got "{fmt}")')
    sys.stdout.flush()
