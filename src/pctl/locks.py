"""`pctl lock` and `pctl locks ls | rm` (tctl lock): stop a user's or a role's certificates everywhere."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from common.cli import render, safe_text
from pctl.output import Fmt, FormatOpt, OptionalFormatOpt, expiry_text, safe_table

locks_app = typer.Typer(help="List and remove locks.", no_args_is_help=True)


def _target(doc: dict[str, Any]) -> str:
    target = doc.get("spec", {}).get("target", {})
    return ", ".join(f"{k}={v}" for k, v in sorted(target.items()))


def locks_table(docs: list[dict[str, Any]]) -> str:
    if not docs:
        return "No locks found."
    rows = [
        [
            d["metadata"]["name"],
            _target(d),
            d["spec"].get("message", ""),
            expiry_text(d["spec"].get("expires")),
            d["spec"].get("created_by", ""),
        ]
        for d in docs
    ]
    return safe_table(["ID", "Target", "Message", "Expires", "Created By"], rows)


def lock(
    user: Annotated[str | None, typer.Option("--user", help="Lock this user.")] = None,
    role: Annotated[str | None, typer.Option("--role", help="Lock every certificate that carries this role.")] = None,
    message: Annotated[str, typer.Option("--message", help="Shown to whoever is refused.")] = "",
    ttl: Annotated[str | None, typer.Option("--ttl", help="How long the lock lasts (e.g. 1h); default: until removed.")] = None,
    fmt: OptionalFormatOpt = None,
) -> None:
    """Lock a user or a role: new sessions are refused and open ones end, everywhere, within seconds."""
    from common.cli import flag_duration
    from common.errors import UsageError
    from pctl.connect import client

    if (user is None) == (role is None):
        raise UsageError("pass exactly one of --user=NAME or --role=NAME")
    seconds = int(flag_duration(ttl, "--ttl").total_seconds()) if ttl else None
    with client() as api:
        doc = api.post("/v1/locks", {"user": user, "role": role, "message": message, "ttl_seconds": seconds})
    if fmt is not None:
        render(doc, fmt)
        return
    until = doc["spec"].get("expires")
    print(
        f"Created a lock with name {safe_text(doc['metadata']['name'])!r} on {safe_text(_target(doc))}"
        f"{' until ' + expiry_text(until) if until else ''}."
    )


@locks_app.command("ls")
def ls(fmt: FormatOpt = Fmt.text) -> None:
    """List the locks in force."""
    from pctl.connect import client

    with client() as api:
        docs = api.get("/v1/locks")
    render(docs, fmt, locks_table)


@locks_app.command("rm")
def rm(lock_id: Annotated[str, typer.Argument(metavar="ID", help="The lock's ID (pctl locks ls).")]) -> None:
    """Remove a lock."""
    from urllib.parse import quote

    from pctl.connect import client

    with client() as api:
        api.delete(f"/v1/locks/{quote(lock_id, safe='')}")
    print(f"Lock {safe_text(lock_id)} has been deleted")
