"""`ptsh status`: the profile block as tsh prints it, or JSON/YAML."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from common.cli import DEBUG, Format, render, safe_text
from common.errors import NotLoggedIn

if TYPE_CHECKING:
    from ptsh.session import Session

LABEL_WIDTH = 20


def profile_view(session: Session, now: datetime | None = None) -> dict[str, Any]:
    """One profile as JSON (the keys of ``tsh status --format=json`` that apply to us)."""
    ident = session.identity
    valid_until = ident.expires
    return {
        "profile_url": session.profile.url,
        "username": ident.username,
        "cluster": ident.cluster_name or session.profile.cluster,
        "roles": sorted(ident.roles),
        "traits": ident.traits,
        "logins": list(ident.traits.get("logins", [])),
        "databases": session.store.logged_in_databases(session.profile),
        "valid_until": valid_until.isoformat() if valid_until else None,
        "expired": session.expired,
        "key_storage": session.profile.key_storage,
    }


def _go_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


def profile_text(session: Session, active: bool, now: datetime | None = None) -> str:
    from common.durations import format_duration

    now = now or datetime.now(UTC)
    view = profile_view(session)
    expires = session.identity.expires
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
        ("Key storage:", _storage_text(session)),
    ]
    lines = []
    for i, (label, value) in enumerate(rows):
        prefix = "> " if (active and i == 0) else "  "
        lines.append(f"{prefix}{label.ljust(LABEL_WIDTH)}{safe_text(value)}".rstrip())
    return "\n".join(lines)


def _storage_text(session: Session) -> str:
    if session.profile.key_storage == "keyring":
        return "OS keyring"
    return f"file ({session.store.key_path(session.profile)})"


def status(
    fmt: Annotated[Format, typer.Option("--format", help="Output format: text, json or yaml.")] = Format.text,
) -> None:
    """Show the logged-in profile(s) and how long the certificate is valid."""
    from common.profile import ProfileStore
    from ptsh.session import open_session

    store = ProfileStore()
    active = store.current()
    if active is None:
        raise NotLoggedIn("Not logged in.")
    session = open_session(store, active)
    others = []
    for name in store.names():
        if name == active.name:
            continue
        try:
            others.append(open_session(store, store.load(name)))
        except Exception:  # noqa: S112 - a damaged extra profile must not hide the active one
            continue
    if fmt == Format.text:
        blocks = [profile_text(session, active=True)] + [profile_text(s, active=False) for s in others]
        render("\n\n".join(blocks), fmt)
    else:
        render({"active": profile_view(session), "profiles": [profile_view(s) for s in others]}, fmt)
    if session.expired:
        raise NotLoggedIn("Active profile expired.")
