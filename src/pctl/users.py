"""`pctl users add | ls | rm | update | reset` (tctl users)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from common.cli import render, safe_text
from common.errors import UsageError
from pctl.output import Fmt, FormatOpt, parse_time, safe_table, split_list, trim_go_duration

users_app = typer.Typer(help="Add, list, update, reset and remove users.", no_args_is_help=True)

ListOpt = list[str] | None
INVITE_TEXT = (
    'User "{user}" has been created but requires a password. Share this URL with the user to complete '
    "user setup, link is valid for {ttl}:\n{url}\n\n"
)
RESET_TEXT = (
    'User "{user}" has been reset. Share this URL with the user to complete password reset, link is valid '
    "for {ttl}:\n{url}\n\n"
)


def _seconds(ttl: str | None) -> int | None:
    if not ttl:
        return None
    from common.cli import flag_duration

    return int(flag_duration(ttl, "--ttl").total_seconds())


def _traits(logins: ListOpt, db_users: ListOpt, db_names: ListOpt) -> dict[str, list[str]]:
    traits = {"logins": split_list(logins), "db_users": split_list(db_users), "db_names": split_list(db_names)}
    return {k: v for k, v in traits.items() if v}


def _print_user_token(doc: dict[str, Any], fmt: Fmt, template: str) -> None:
    if fmt == Fmt.text:
        from urllib.parse import urlsplit

        url = doc["spec"]["url"]
        ttl = trim_go_duration(str(doc.get("ttl") or ""))
        print(template.format(user=safe_text(doc["spec"]["user"]), ttl=ttl, url=safe_text(url)), end="")
        print(f"NOTE: Make sure {urlsplit(url).netloc} points at a pteleport proxy which users can access.")
        return
    render({k: v for k, v in doc.items() if k != "ttl"}, fmt)


@users_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="The new user's name.")],
    roles: Annotated[ListOpt, typer.Option("--roles", help="Roles, comma-separated (e.g. access,db).")] = None,
    logins: Annotated[ListOpt, typer.Option("--logins", help="Trait logins, comma-separated.")] = None,
    db_users: Annotated[ListOpt, typer.Option("--db-users", help="Trait db_users: database users allowed.")] = None,
    db_names: Annotated[ListOpt, typer.Option("--db-names", help="Trait db_names: database names allowed.")] = None,
    ttl: Annotated[
        str | None, typer.Option("--ttl", help="How long the invite link works (default 1h, max 48h).")
    ] = None,
    fmt: FormatOpt = Fmt.text,
) -> None:
    """Create a user and print the invite link they complete with ptsh signup (or a browser)."""
    from pctl.connect import client

    role_list = split_list(roles)
    if not role_list:
        raise UsageError("pass --roles with at least one role, e.g. --roles=access")
    body = {
        "name": name,
        "roles": role_list,
        "traits": _traits(logins, db_users, db_names),
        "ttl_seconds": _seconds(ttl),
    }
    with client() as api:
        doc = api.post("/v1/users", body)
    _print_user_token(doc, fmt, INVITE_TEXT)


def status_text(doc: dict[str, Any]) -> str:
    """``locked until 2026-12-01 12:00 UTC``, ``active``, ``invited``, ``reset``, ``bot`` or ``no password``."""
    status = doc.get("status") or {}
    if status.get("is_locked"):
        until = parse_time(status.get("lock_expires"))
        return f"locked until {until:%Y-%m-%d %H:%M} UTC" if until else "locked"
    return str(status.get("state") or "")


def users_table(docs: list[dict[str, Any]]) -> str:
    if not docs:
        return "No users found"
    rows = [[d["metadata"]["name"], ",".join(d["spec"].get("roles", [])), status_text(d)] for d in docs]
    return safe_table(["User", "Roles", "Status"], rows)


@users_app.command("ls")
def ls(fmt: FormatOpt = Fmt.text) -> None:
    """List users, their roles and whether they are active, invited or locked out."""
    from pctl.connect import client

    with client() as api:
        docs = api.get("/v1/users")
    docs.sort(key=lambda d: d["metadata"]["name"])
    render(docs, fmt, users_table)


@users_app.command("rm")
def rm(names: Annotated[str, typer.Argument(help="User name(s), comma-separated.")]) -> None:
    """Delete one or more users (comma-separated)."""
    from urllib.parse import quote

    from pctl.connect import client

    users = split_list(names)
    if not users:
        raise UsageError("pass the user name(s) to delete, e.g. pctl users rm alice,bob")
    with client() as api:
        for user in users:
            api.delete(f"/v1/users/{quote(user, safe='')}")
            print(f'User "{safe_text(user)}" has been deleted')


@users_app.command("update")
def update(
    name: Annotated[str, typer.Argument(help="The user to change.")],
    set_roles: Annotated[ListOpt, typer.Option("--set-roles", help="Replace the roles (comma-separated).")] = None,
    set_logins: Annotated[ListOpt, typer.Option("--set-logins", help="Replace the logins trait.")] = None,
    set_db_users: Annotated[ListOpt, typer.Option("--set-db-users", help="Replace the db_users trait.")] = None,
    set_db_names: Annotated[ListOpt, typer.Option("--set-db-names", help="Replace the db_names trait.")] = None,
) -> None:
    """Change a user's roles or traits (takes effect at their next login)."""
    from urllib.parse import quote

    from pctl.connect import client

    roles = split_list(set_roles) or None
    traits = _traits(set_logins, set_db_users, set_db_names)
    if roles is None and not traits:
        raise UsageError("Nothing to update. Please provide at least one --set flag.")
    with client() as api:
        api.put(f"/v1/users/{quote(name, safe='')}", {"roles": roles, "traits": traits})
    words = {"logins": "logins", "db_users": "database users", "db_names": "database names"}
    if roles is not None:
        print(f"User {safe_text(name)} has been updated with roles {safe_text(','.join(roles))}")
    for key, values in traits.items():
        print(f"User {safe_text(name)} has been updated with {words[key]} {safe_text(','.join(values))}")


@users_app.command("reset")
def reset(
    name: Annotated[str, typer.Argument(help="The user whose password and second factor to reset.")],
    ttl: Annotated[
        str | None, typer.Option("--ttl", help="How long the reset link works (default 8h, max 24h).")
    ] = None,
    fmt: FormatOpt = Fmt.text,
) -> None:
    """Reset a user's password and authenticator; prints a link they complete with ptsh signup."""
    from urllib.parse import quote

    from pctl.connect import client

    with client() as api:
        doc = api.post(f"/v1/users/{quote(name, safe='')}/reset", {"ttl_seconds": _seconds(ttl)})
    _print_user_token(doc, fmt, RESET_TEXT)
