"""`pctl`: the admin tool. Status, join tokens, resources (create/get/rm), users, databases.

Credentials: ``-i FILE``, else the admin identity in the data dir (on the auth host), else
the current ptsh login (see ``pctl.connect``). Only typer, the standard library and
common.cli/common.errors load at start-up.
"""

from __future__ import annotations

from typing import Annotated

import typer

from common.cli import DEBUG, add_help_command, add_version_command, run_app
from pctl import resources as _resources
from pctl import status as _status
from pctl.audit import audit_app
from pctl.auth import auth_app
from pctl.bots import bots_app
from pctl.db import db_app
from pctl.locks import lock as _lock
from pctl.locks import locks_app
from pctl.requests import requests_app
from pctl.tokens import tokens_app
from pctl.users import users_app

app = typer.Typer(
    help="pctl: administer a pteleport cluster (tokens, roles, users, bots, databases, identity files).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    config: Annotated[
        str | None, typer.Option("--config", "-c", help="pteleport config file; its teleport.data_dir is used.")
    ] = None,
    data_dir: Annotated[
        str | None, typer.Option("--data-dir", help="The daemon's data dir (holds admin-identity.pem).")
    ] = None,
    identity: Annotated[
        str | None, typer.Option("--identity", "-i", help="Identity file (from pctl auth sign) to act as.")
    ] = None,
    auth_server: Annotated[str | None, typer.Option("--auth-server", help="Proxy address HOST:PORT to reach.")] = None,
    debug: Annotated[bool, typer.Option("--debug", "-d", help="Verbose output and tracebacks.")] = False,
) -> None:
    from pctl.connect import STATE

    STATE.update(config=config, data_dir=data_dir, identity=identity, auth_server=auth_server)
    DEBUG["on"] = DEBUG["on"] or debug


add_version_command(app, "pctl")
add_help_command(app, "pctl")


app.command("status")(_status.status)
app.command("create")(_resources.create)
app.command("get")(_resources.get)
app.command("rm")(_resources.rm)
app.command("lock")(_lock)
app.add_typer(locks_app, name="locks")
app.add_typer(tokens_app, name="tokens")
app.add_typer(users_app, name="users")
app.add_typer(db_app, name="db")
app.add_typer(auth_app, name="auth")
app.add_typer(bots_app, name="bots")
app.add_typer(audit_app, name="audit")
app.add_typer(requests_app, name="requests")


def main() -> None:
    run_app(app, "pctl")


if __name__ == "__main__":
    main()
