"""`pctl requests ls | approve | deny | rm` (tctl requests): an admin's view of access requests.

``approve`` and ``deny`` set the state directly, whatever the thresholds say (audited as
``access_request.update`` T5001I); nobody may decide their own request this way either.
"""

from __future__ import annotations

from typing import Annotated

import typer

from common.cli import render, safe_text
from pctl.output import Fmt, FormatOpt

requests_app = typer.Typer(help="List, approve, deny and remove access requests.", no_args_is_help=True)

IdArg = Annotated[str, typer.Argument(metavar="ID", help="The request's ID (pctl requests ls).")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (the requester reads it).")]


def _path(rid: str) -> str:
    from urllib.parse import quote

    return f"/v1/requests/{quote(rid, safe='')}"


@requests_app.command("ls")
def ls(fmt: FormatOpt = Fmt.text) -> None:
    """List access requests, newest first."""
    from common.request_text import requests_table
    from pctl.connect import client

    with client() as api:
        docs = api.get("/v1/requests")
    render(docs, fmt, requests_table)


def _decide(rid: str, state: str, reason: str, fmt: Fmt) -> None:
    from pctl.connect import client

    with client() as api:
        doc = api.put(f"{_path(rid)}/state", {"state": state, "reason": reason})
    if fmt != Fmt.text:
        render(doc, fmt)
        return
    print(f"Request {safe_text(rid)} has been set to {doc['spec']['state']}.")


@requests_app.command("approve")
def approve(request_id: IdArg, reason: ReasonOpt = "", fmt: FormatOpt = Fmt.text) -> None:
    """Approve an access request."""
    _decide(request_id, "APPROVED", reason, fmt)


@requests_app.command("deny")
def deny(request_id: IdArg, reason: ReasonOpt = "", fmt: FormatOpt = Fmt.text) -> None:
    """Deny an access request."""
    _decide(request_id, "DENIED", reason, fmt)


@requests_app.command("rm")
def rm(request_id: IdArg) -> None:
    """Remove an access request: certificates that carry it stop working."""
    from pctl.connect import client

    with client() as api:
        api.delete(_path(request_id))
    print(f"Request {safe_text(request_id)} has been deleted.")
