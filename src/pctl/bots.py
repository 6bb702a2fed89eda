"""`pctl bots add | ls | rm`: machine users for CI and scripts (tctl bots).

A bot is a user that never has a password. ``add`` prints a single-use join token; the
machine that runs the job trades it for an identity file with ``ptsh login --bot`` (its
private key is made there and never travels).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from common.cli import render, safe_text
from pctl.output import Fmt, FormatOpt, OptionalFormatOpt, expiry_text, safe_table, split_list

bots_app = typer.Typer(help="Add, list and remove bots (machine users for CI).", no_args_is_help=True)

ADD_TEXT = """Bot "{name}" has been created with roles {roles}. It cannot log in with a password.
The bot join token: {token}
This token can be used once and will expire in {ttl}.

On the machine that runs the job, trade it for an identity file (its key is made there):

> ptsh login --bot --token={token} --proxy={proxy} --out={name}.identity{insecure}

Then use the identity file:

> ptsh -i {name}.identity db ls --format=json
"""


@bots_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="The bot's name (also its user name).")],
    roles: Annotated[
        list[str] | None, typer.Option("--roles", help="Roles, comma-separated, e.g. db-readonly.")
    ] = None,
    db_users: Annotated[list[str] | None, typer.Option("--db-users", help="Trait db_users.")] = None,
    db_names: Annotated[list[str] | None, typer.Option("--db-names", help="Trait db_names.")] = None,
    ttl: Annotated[str, typer.Option("--ttl", help="How long the join token is valid (default 1h).")] = "1h",
    fmt: OptionalFormatOpt = None,
) -> None:
    """Create a bot and print its single-use join token (--format=text prints only the token)."""
    from common.cli import flag_duration
    from common.durations import format_duration
    from common.errors import UsageError
    from pctl.connect import client

    role_list = split_list(roles)
    if not role_list:
        raise UsageError("pass --roles with at least one role, e.g. --roles=db-readonly")
    delta = flag_duration(ttl, "--ttl")
    traits = {k: v for k, v in {"db_users": split_list(db_users), "db_names": split_list(db_names)}.items() if v}
    body = {"name": name, "roles": role_list, "traits": traits, "token_ttl_seconds": int(delta.total_seconds())}
    with client() as api:
        doc = api.post("/v1/bots", body)
        insecure = " --insecure" if fmt is None and self_signed(api) else ""
    if fmt == Fmt.text:
        print(doc["token"])
    elif fmt is not None:
        render(doc, fmt)
    else:
        print(
            ADD_TEXT.format(
                name=safe_text(doc["name"]),
                roles=safe_text(",".join(doc["roles"])),
                token=doc["token"],
                ttl=format_duration(delta),
                proxy=doc.get("proxy") or "HOST:PORT",
                insecure=insecure,
            ),
            end="",
        )


def self_signed(api: Any) -> bool:
    """Whether the proxy's web certificate is the self-signed one of a test cluster (then the first
    login from another machine needs --insecure)."""
    try:
        return bool(((api.get("/v1/ping") or {}).get("proxy") or {}).get("web_cert_self_signed"))
    except Exception:
        return False


def _when(text: str | None) -> str:
    from pctl.output import parse_time

    when = parse_time(text)
    return f"{when:%Y-%m-%d %H:%M} UTC" if when else "never"


def bots_table(docs: list[dict[str, Any]]) -> str:
    if not docs:
        return "No bots found"
    rows = [
        [
            d["name"],
            ",".join(d.get("roles", [])),
            expiry_text(d["token_expires"]) if d.get("token_expires") else "none (used or expired)",
            _when(d.get("last_join")),
        ]
        for d in docs
    ]
    return safe_table(["Bot", "Roles", "Join token expires", "Last join"], rows)


@bots_app.command("ls")
def ls(fmt: FormatOpt = Fmt.text) -> None:
    """List bots, their roles, pending join tokens and last join."""
    from pctl.connect import client

    with client() as api:
        docs = api.get("/v1/bots")
    render(docs, fmt, bots_table)


@bots_app.command("rm")
def rm(name: Annotated[str, typer.Argument(help="The bot to delete.")]) -> None:
    """Delete a bot (its user and any unused join token; identity files already issued expire on their own)."""
    from urllib.parse import quote

    from pctl.connect import client

    with client() as api:
        api.delete(f"/v1/bots/{quote(name, safe='')}")
    print(f'Bot "{safe_text(name)}" has been deleted')
