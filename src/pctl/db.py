"""`pctl db ls`: databases served by live agents (tctl db ls)."""

from __future__ import annotations

import typer

from common.cli import render
from pctl.output import Fmt, FormatOpt

db_app = typer.Typer(help="List databases served by agents.", no_args_is_help=True)


@db_app.command("ls")
def ls(fmt: FormatOpt = Fmt.text) -> None:
    """List the databases agents serve now (one row per agent)."""
    from pctl.connect import client
    from pctl.resources import db_servers_table

    with client() as api:
        docs = api.get("/v1/resources/db_server")
    render(docs, fmt, db_servers_table)
