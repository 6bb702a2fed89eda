"""The preset roles every cluster starts with: ``access``, ``editor``, ``auditor``, ``requester``, ``reviewer``.

- ``access``: every database, as the db users / db names / logins in the user's own traits;
  may list and read audit events, and read recordings of sessions the user took part in.
- ``editor``: manages the cluster's configuration (users, roles, tokens, databases, ...)
  and reads the audit log; no database access itself.
- ``auditor``: reads the audit log and session recordings; no database access.
- ``requester``: may request the roles named ``db`` or ``db-*`` (access requests); one
  approval decides. Teleport ships this one in Enterprise only.
- ``reviewer``: may approve or deny requests for those roles, and list them.

All are v7 with ``max_session_ttl: 30h``, like Teleport's. Unlike Teleport's auditor, ours
has no random ``no-login-<uuid>`` login (this package makes no random values).
"""

from __future__ import annotations

from typing import Any

from pteleport.rbac.role import Role, parse_role

PRESET_ROLE_NAMES = ("access", "editor", "auditor", "requester", "reviewer")
REQUESTABLE = ["db", "db-*"]

READ_ONLY = ["list", "read"]
READ_WRITE = ["list", "create", "read", "update", "delete"]
_TTL = {"max_session_ttl": "30h0m0s"}

_EDITABLE = [
    "user",
    "role",
    "token",
    "db",
    "db_server",
    "db_service",
    "lock",
    "access_request",
    "cluster_auth_preference",
    "cluster_audit_config",
    "cluster_networking_config",
    "session_recording_config",
]


def _role(name: str, description: str, allow: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "role",
        "version": "v7",
        "metadata": {
            "name": name,
            "description": description,
            "labels": {"teleport.internal/resource-type": "preset"},
        },
        "spec": {"options": dict(_TTL), "allow": allow, "deny": {}},
    }


def preset_role_docs() -> list[dict[str, Any]]:
    """The preset roles as documents (what ``pctl get role/access`` shows)."""
    return [
        _role(
            "access",
            "Access cluster resources",
            {
                "db_labels": {"*": "*"},
                "db_names": ["{{internal.db_names}}"],
                "db_users": ["{{internal.db_users}}"],
                "db_roles": ["{{internal.db_roles}}"],
                "logins": ["{{internal.logins}}"],
                "rules": [
                    {"resources": ["event"], "verbs": list(READ_ONLY)},
                    {
                        "resources": ["session"],
                        "verbs": ["read", "list"],
                        "where": "contains(session.participants, user.metadata.name)",
                    },
                ],
            },
        ),
        _role(
            "editor",
            "Edit cluster configuration",
            {
                "rules": [
                    {"resources": list(_EDITABLE), "verbs": list(READ_WRITE)},
                    {"resources": ["event", "session", "session_tracker"], "verbs": list(READ_ONLY)},
                ],
            },
        ),
        _role(
            "auditor",
            "Review cluster events and replay sessions",
            {
                "rules": [
                    {"resources": ["session", "event", "session_tracker"], "verbs": list(READ_ONLY)},
                ],
            },
        ),
        _role(
            "requester",
            "Request access to db roles",
            {"request": {"roles": list(REQUESTABLE)}},
        ),
        _role(
            "reviewer",
            "Review access requests for db roles",
            {
                "review_requests": {"roles": list(REQUESTABLE)},
                "rules": [{"resources": ["access_request"], "verbs": list(READ_ONLY)}],
            },
        ),
    ]


def preset_roles() -> list[Role]:
    """The preset roles, parsed."""
    return [parse_role(doc) for doc in preset_role_docs()]
