"""`ptsh status`: the profile block as tsh prints it, or JSON/YAML; with ``-i FILE``, the identity file's."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from common.cli import DEBUG, Format, render, safe_text
from common.errors import NotLoggedIn

if TYPE_CHECKING:
    from ptsh.login_state import Login

LABEL_WIDTH = 20


def profile_view(login: Login, now: datetime | None = None) -> dict[str, Any]:
    """One profile as JSON (the keys of ``tsh status --format=json`` that apply to us)."""
    ident = login.identity
    valid_until = ident.expires
    databases: list[str] = []
    if login.store is not None and login.profile is not None:
        databases = login.store.logged_in_databases(login.profile)
    return {
        "profile_url": f"https://{login.proxy}",
        "username": ident.username,
        "active_requests": list(ident.active_requests),
        "cluster": ident.cluster_name or login.cluster,
        "roles": sorted(ident.roles),
        "traits": ident.traits,
        "logins": list(ident.traits.get("logins", [])),
        "databases": databases,
        "valid_until": valid_until.isoformat() if valid_until else None,
        "expired": login.expired,
        "key_storage": login.profile.key_storage if login.profile is not None else "identity file",
        "identity_file": login.identity_file,
    }


def _go_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


def profile_text(login: Login, active: bool, now: datetime | None = None) -> str:
    from common.durations import format_duration

    now = now or datetime.now(UTC)
    view = profile_view(login)
    expires = login.identity.expires
    if expires is None:
        validity = "unknown"
    elif expires <= now:
        validity = f"{_go_time(expires)} [EXPIRED]"
    else:
        left = expires - now
        validity = f"{_go_time(expires)} [valid for {format_duration(left) if left.total_seconds() >= 60 else '<1m'}]"
    rows = [
        ("Profile URL:", view["profile_url"]),
        ("Logged in as:", view["username"]),
    ]
    if view["active_requests"]:
        rows.append(("Active requests:", ", ".join(view["active_requests"])))
    rows += [
        ("Cluster:", view["cluster"]),
        ("Roles:", ", ".join(view["roles"])),
    ]
    if DEBUG["on"]:
        traits = ", ".join(f"{k}: {v}" for k, v in sorted(view["traits"].items()))
        rows.append(("Traits:", traits))
    if view["logins"]:
        rows.append(("Logins:", ", ".join(view["logins"])))
    rows += [
        ("Databases:", ", ".join(view["databases"])),
        ("Valid until:", validity),
        ("Key storage:", _storage_text(login)),
    ]
    lines = []
    for i, (label, value) in enumerate(rows):
        prefix = "> " if (active and i == 0) else "  "
        lines.append(f"{prefix}{label.ljust(LABEL_WIDTH)}{safe_text(value)}".rstrip())
    return "\n".join(lines)


def _storage_text(login: Login) -> str:
    if login.identity_file is not None:
        return f"identity file ({login.identity_file})"
    assert login.profile is not None and login.store is not None
    if login.profile.key_storage == "keyring":
        return "OS keyring"
    return f"file ({login.store.key_path(login.profile)})"


def status(
    fmt: Annotated[Format, typer.Option("--format", help="Output format: text, json or yaml.")] = Format.text,
) -> None:
    """Show the logged-in profile(s), or the identity file (-i), and how long the certificate is valid."""
    from common.profile import ProfileStore
    from ptsh.login_state import current_login, identity_file_path, not_logged_in, profile_login

    if identity_file_path():
        active = current_login(allow_expired=True)
        others = []
    else:
        store = ProfileStore()
        profile = store.current()
        if profile is None:
            raise not_logged_in()
        active = profile_login(store, profile)
        others = []
        for name in store.names():
            if name == profile.name:
                continue
            try:
                others.append(profile_login(store, store.load(name)))
            except Exception:  # noqa: S112 - a damaged extra profile must not hide the active one
                continue
    if fmt == Format.text:
        blocks = [profile_text(active, active=True)] + [profile_text(s, active=False) for s in others]
        render("\n\n".join(blocks), fmt)
    else:
        render({"active": profile_view(active), "profiles": [profile_view(s) for s in others]}, fmt)
    if active.expired:
        if active.identity_file is not None:
            raise NotLoggedIn(f"The identity file {active.identity_file} has expired.")
        raise NotLoggedIn("Active profile expired.")
