"""Joined hosts (database services): the identity auth assigned each one, and what it may serve.

At join, auth assigns the host id (a joiner never chooses it) and binds the join token's
scope to it, in the host certificate and in a record here (``hosts/<host_id>``). When a host
registers a database (heartbeat), ``may_serve`` decides:

- the database must be inside the host's scope (its name among ``db_names`` when those are
  set; its labels matching ``db_labels`` when those are set);
- a name that some joined host's scope names explicitly is *reserved*: only hosts whose
  scope names it too may register it;
- a database that a scoped host registers now cannot be registered by an unscoped host.

An unscoped host (a token without ``--db-name``/``--labels``) may serve any database that is
not reserved, which is Teleport's behaviour.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from common.errors import NotFound
from common.identity import HostScope, Identity
from pteleport.auth.context import AuthContext
from pteleport.rbac.matchers import match_labels


def scope_allows(scope: HostScope, name: str, labels: dict[str, str]) -> str | None:
    """Why ``scope`` does not cover the database, or None when it does."""
    if scope.db_names and name not in scope.db_names:
        return f"its join token allows only {', '.join(scope.db_names)}"
    if scope.db_labels and not match_labels(scope.labels, labels):
        wanted = ",".join(f"{k}={'|'.join(v)}" for k, v in scope.db_labels)
        return f"its join token allows only databases labelled {wanted}"
    return None


class HostService:
    def __init__(self, ctx: AuthContext) -> None:
        self.ctx = ctx

    def record_join(self, host_id: str, role: str, hostname: str, scope: HostScope, token_id: str) -> None:
        self.ctx.hosts.create(
            host_id,
            {
                "host_id": host_id,
                "role": role,
                "hostname": hostname,
                "scope": scope.to_dict(),
                "token_id": token_id,
                "joined": self.ctx.clock().isoformat(),
                "registered": [],
            },
        )

    def exists(self, host_id: str) -> bool:
        return self.ctx.hosts.exists(host_id)

    def scope_of(self, identity: Identity) -> HostScope:
        """The host's scope: from its record (authoritative), else its certificate, else none."""
        try:
            return HostScope.from_dict(self.ctx.hosts.get(identity.username).get("scope"))
        except NotFound:
            return identity.host_scope or HostScope()

    def reserved(self) -> dict[str, set[str]]:
        """Database name -> host ids whose scope names it explicitly."""
        out: dict[str, set[str]] = {}
        for host_id, doc, _item in self.ctx.hosts.items():
            for name in (doc.get("scope") or {}).get("db_names") or []:
                out.setdefault(name, set()).add(host_id)
        return out

    def may_serve(
        self,
        identity: Identity,
        scope: HostScope,
        name: str,
        labels: dict[str, str],
        reserved: dict[str, set[str]],
        live: list[dict[str, Any]],
    ) -> str | None:
        """Why ``identity`` may not register database ``name`` (a sentence), or None."""
        outside = scope_allows(scope, name, labels)
        if outside is not None:
            return f'database "{name}" is outside this database service\'s scope: {outside}'
        owners = reserved.get(name, set())
        if owners and identity.username not in owners and name not in scope.db_names:
            return (
                f'database "{name}" is reserved for the database services whose join token names it; '
                f'join this one with a token made by "pctl tokens add --type=db --db-name={name}"'
            )
        if scope.unscoped:
            for server in live:
                other = server["spec"]["host_id"]
                if other != identity.username and not HostScope.from_dict(server["spec"].get("scope")).unscoped:
                    return (
                        f'database "{name}" is served by a database service with a scoped join token; '
                        "an unscoped one may not serve it too"
                    )
        return None

    def registered_names(self, host_id: str) -> set[str]:
        """Every database name ``host_id`` has registered (some may have expired since)."""
        try:
            return set(self.ctx.hosts.get(host_id).get("registered") or [])
        except NotFound:
            return set()

    def note_registered(self, host_id: str, name: str, hostname: str, now: datetime) -> bool:
        """Remember that ``host_id`` registered ``name``; True the first time (an audit event then)."""
        try:
            doc = self.ctx.hosts.get(host_id)
        except NotFound:
            doc = {"host_id": host_id, "role": "Db", "hostname": hostname, "scope": {}, "joined": None, "registered": []}
        registered = list(doc.get("registered") or [])
        if name in registered:
            return False
        registered.append(name)
        doc["registered"] = registered
        doc["last_registered"] = now.isoformat()
        self.ctx.hosts.put(host_id, doc)
        return True
