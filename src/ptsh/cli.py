"""`ptsh`: the user tool. Log in, show status, sign up, and (``ptsh db``, ``ptsh proxy db``)
reach databases.

Only typer, the standard library and common.cli/common.errors load at start-up; every
command imports what it needs, so ``ptsh --help`` and completion stay fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

from common.cli import DEBUG, add_help_command, add_version_command, run_app
from ptsh import login as _login
from ptsh import play as _play
from ptsh import signup as _signup
from ptsh import status as _status
from ptsh.db import db_app
from ptsh.options import GLOBALS, CaFileOpt, InsecureOpt, ProxyOpt, UserOpt
from ptsh.proxy import proxy_app
from ptsh.requests import request_app

app = typer.Typer(
    help="ptsh: log in to a pteleport cluster and reach its databases.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    proxy: ProxyOpt = None,
    user: UserOpt = None,
    insecure: InsecureOpt = False,
    ca_file: CaFileOpt = None,
    identity: Annotated[
        str | None,
        typer.Option(
            "--identity",
            "-i",
            help="Use this identity file (ptsh login --bot, pctl auth sign), no profile; env PTSH_IDENTITY_FILE.",
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", "-d", help="Verbose output and tracebacks.")] = False,
) -> None:
    GLOBALS.update(proxy=proxy, user=user, insecure=insecure, ca_file=ca_file)
    if identity:
        from ptsh.login_state import IDENTITY_FLAG

        IDENTITY_FLAG["path"] = identity
    DEBUG["on"] = DEBUG["on"] or debug


add_version_command(app, "ptsh")
add_help_command(app, "ptsh")


app.command("login")(_login.login)
app.command("logout")(_login.logout)
app.command("status")(_status.status)
app.command("signup")(_signup.signup)
app.add_typer(db_app, name="db")
app.add_typer(proxy_app, name="proxy")
app.add_typer(request_app, name="request")
_play.register(app)


def main() -> None:
    run_app(app, "ptsh")


if __name__ == "__main__":
    main()
