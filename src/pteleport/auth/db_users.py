"""Whether a database session uses an automatically created database user, and as whom.

Auth (when it issues a database certificate) and the agent (when a session starts) ask the
same question with ``auto_user_plan``: the roles that allow the database decide the mode
(``AccessChecker.db_user_mode``); when it is not ``off`` the database must name an admin
user (``spec.admin_user.name``) and the db user is the pteleport user name, as in Teleport.
The answer carries the database roles to grant (``allow.db_roles``, traits expanded).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.errors import AccessDenied, BadParameter

MODES = ("off", "keep", "best_effort_drop")


@dataclass(frozen=True)
class AutoUserPlan:
    """A session's automatic user: who, in which mode, with which database roles, created by which admin."""

    db_user: str
    mode: str  # keep | best_effort_drop
    db_roles: tuple[str, ...]
    admin_user: str
    admin_database: str | None


def auto_user_plan(
    checker: Any, db: Mapping[str, Any], username: str, requested_db_user: str | None
) -> AutoUserPlan | None:
    """The plan for ``username`` on ``db``, or None when the roles do not create users there.

    Raises ``BadParameter`` when the client asked for another db user, and ``AccessDenied``
    when the database has no admin user to create users with.
    """
    name = db["metadata"]["name"]
    labels = db["metadata"].get("labels", {})
    mode = checker.db_user_mode(labels)
    if mode == "off":
        return None
    admin = db["spec"].get("admin_user") or {}
    if not admin.get("name"):
        raise AccessDenied(
            f'your roles create database users automatically (create_db_user_mode: {mode}) but database "{name}"'
            " has no admin user; ask an admin to set spec.admin_user.name on it (docs/auto-users.md)"
        )
    if requested_db_user and requested_db_user != username:
        raise BadParameter(
            f'database "{name}" creates your database user automatically: connect as "{username}"'
            f' (your pteleport user name), not "{requested_db_user}"; leave --db-user out or pass --db-user={username}'
        )
    return AutoUserPlan(
        db_user=username,
        mode=mode,
        db_roles=tuple(checker.db_roles(labels)),
        admin_user=admin["name"],
        admin_database=admin.get("default_database") or None,
    )
