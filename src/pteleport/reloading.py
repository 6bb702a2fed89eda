"""What a SIGHUP may change in a running daemon, and what needs a restart.

``changes(old, new)`` compares two configs key by key (lists as a whole) and sorts the keys
that differ into those the running process applies (``RELOADABLE``, docs/config.md) and
those that need a restart (everything else: listen addresses, storage, certificates, the
cluster name, the services enabled, the agent's proxy and identity).
"""

from __future__ import annotations

from typing import Any

from pteleport.config import Config

RELOADABLE = (
    "teleport.log.",
    "teleport.shutdown_timeout",
    "auth_service.lockout.",
    "auth_service.audit.retention",
    "auth_service.tokens",
    "db_service.databases",
    "db_service.resources",
    "db_service.audit.",
)


def flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay whole."""
    if not isinstance(doc, dict):
        return {prefix: doc}
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def reloadable(key: str) -> bool:
    return any(key == p.rstrip(".") or key.startswith(p) for p in RELOADABLE)


def changes(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """(keys applied now, keys that need a restart), each sorted."""
    a, b = flatten(old.model_dump(mode="json")), flatten(new.model_dump(mode="json"))
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return [k for k in differ if reloadable(k)], [k for k in differ if not reloadable(k)]
