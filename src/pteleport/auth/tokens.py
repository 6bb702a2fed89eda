"""Join tokens (`pctl tokens`) and joining: a token plus a public key become a host certificate."""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime, timedelta
from typing import Any

from common.errors import AccessDenied, AlreadyExists, BadParameter, NotFound
from common.identity import HostScope, Identity
from common.tls import load_public_key
from pteleport.auth.certs import CertService
from pteleport.auth.context import AuthContext, secret_key
from pteleport.auth.hosts import HostService

DEFAULT_TTL = timedelta(minutes=30)
# Bots join with their own single-use tokens (pctl bots add), never through these.
JOIN_ROLES = {"db": "Db", "proxy": "Proxy", "node": "Node", "app": "App"}


def normalize_roles(types: list[str]) -> list[str]:
    roles = []
    for t in types:
        role = JOIN_ROLES.get(t.strip().lower())
        if role is None:
            raise BadParameter(f'unknown token type "{t}"; use one of: {", ".join(JOIN_ROLES)}')
        roles.append(role)
    if not roles:
        raise BadParameter("pass --type, e.g. --type=db")
    return roles


def token_doc(
    token: str, roles: list[str], expires: datetime | None, labels: dict | None = None, scope: HostScope | None = None
) -> dict:
    meta: dict[str, Any] = {"name": token}
    if expires is not None:
        meta["expires"] = expires.isoformat()
    spec: dict[str, Any] = {"roles": roles, "join_method": "token"}
    if labels:
        spec["suggested_labels"] = labels
    if scope is not None and not scope.unscoped:
        spec["db_scope"] = scope.to_dict()
    return {"kind": "token", "version": "v2", "metadata": meta, "spec": spec}


def token_scope(doc: dict) -> HostScope:
    """The databases an agent joining with this token may serve (none given: any)."""
    return HostScope.from_dict((doc.get("spec") or {}).get("db_scope"))


class TokenService:
    def __init__(self, ctx: AuthContext, certs: CertService, hosts: HostService) -> None:
        self.ctx = ctx
        self.certs = certs
        self.hosts = hosts

    def add(
        self,
        actor: Identity,
        types: list[str],
        ttl: timedelta | None,
        value: str | None,
        labels: dict | None = None,
        db_names: list[str] | None = None,
    ) -> dict:
        self.ctx.authorize(actor, "token", "create")
        roles = normalize_roles(types)
        ttl = ttl or DEFAULT_TTL
        if ttl <= timedelta(0):
            raise BadParameter("--ttl must be positive")
        token = value or secrets.token_hex(16)
        if len(token) < 8:
            raise BadParameter("a token value must be at least 8 characters long")
        expires = self.ctx.clock() + ttl
        scope = None
        if db_names or labels:
            if roles != ["Db"]:
                raise BadParameter("--db-name and --labels scope a token for database services; use them with --type=db only")
            scope = HostScope.of(db_names or [], {k: v if isinstance(v, list) else [v] for k, v in (labels or {}).items()})
        doc = token_doc(token, roles, expires, labels, scope)
        try:
            self.ctx.tokens.create(secret_key(token), doc, expires=expires)
        except AlreadyExists:
            raise AlreadyExists("a token with this value already exists") from None
        self.ctx.emit("join_token.create", "TJT00I", user=actor.username, roles=roles, join_method="token")
        return doc

    def put_resource(self, actor: Identity, doc: dict, force: bool) -> str:
        token = doc["metadata"]["name"]
        expires = datetime.fromisoformat(doc["metadata"]["expires"]) if doc["metadata"].get("expires") else None
        exists = self.ctx.tokens.exists(secret_key(token))
        if exists and not force:
            raise AlreadyExists("this token already exists; pass -f/--force to overwrite it")
        self.ctx.authorize(actor, "token", "update" if exists else "create")
        normalize_roles([r.lower() for r in doc["spec"]["roles"]])
        self.ctx.tokens.put(secret_key(token), doc, expires=expires)
        self.ctx.emit("join_token.create", "TJT00I", user=actor.username, roles=doc["spec"]["roles"])
        return "updated" if exists else "created"

    def list(self, actor: Identity) -> list[dict]:
        self.ctx.authorize(actor, "token", "list")
        docs = self.ctx.tokens.list()
        for static in self.ctx.settings.static_tokens:
            kinds, _, value = static.rpartition(":")
            docs.append(token_doc(value, normalize_roles(kinds.split(",")), None))
        return docs

    def remove(self, actor: Identity, token: str) -> None:
        self.ctx.authorize(actor, "token", "delete")
        try:
            self.ctx.tokens.delete(secret_key(token))
        except NotFound:
            raise NotFound(f'token "{token}" does not exist; "pctl tokens ls" lists tokens') from None

    def _find(self, token: str) -> dict:
        for static in self.ctx.settings.static_tokens:
            kinds, _, value = static.rpartition(":")
            if secrets.compare_digest(value.encode(), token.encode()):
                return token_doc(value, normalize_roles(kinds.split(",")), None)
        try:
            return self.ctx.tokens.get(secret_key(token))
        except NotFound:
            raise AccessDenied(
                'the join token is invalid or has expired; create a new one with "pctl tokens add --type=db"'
            ) from None

    def join(
        self, token: str, role: str, claimed_host_id: str | None, hostname: str, public_key_pem: str, remote: str
    ) -> tuple[bytes, str]:
        """Check the token's type and expiry, then sign a host certificate with a host id auth picks.

        Returns the certificate and the host id. A joiner never chooses its host id: a request
        that names one is refused (and audited), so no join can take over another host.
        """
        key = load_public_key(public_key_pem)

        def refuse(error: AccessDenied) -> AccessDenied:
            self.ctx.emit(
                "instance.join",
                "TJ002E",
                role=role,
                host_id=claimed_host_id or None,
                nodename=hostname or None,
                success=False,
                error=error.message,
                **{"addr.remote": remote},
            )
            return error

        if claimed_host_id:
            if self.hosts.exists(claimed_host_id):
                raise refuse(AccessDenied(f'host id "{claimed_host_id}" belongs to another host; the cluster assigns host ids at join'))
            raise refuse(AccessDenied("the cluster assigns host ids at join; send the join request without host_id"))
        try:
            doc = self._find(token)
        except AccessDenied as exc:
            raise refuse(exc) from None
        if role not in doc["spec"]["roles"]:
            raise refuse(
                AccessDenied(
                    f"this token cannot join a {role} service (it allows {', '.join(doc['spec']['roles'])}); "
                    "create one with the right --type"
                )
            )
        scope = token_scope(doc) if role == "Db" else HostScope()
        host_id = str(uuid.uuid4())
        cert = self.certs.sign_host(host_id, role, key, [hostname] if hostname else [], scope=scope)
        self.hosts.record_join(host_id, role, hostname, scope, secret_key(token)[:16])
        self.ctx.emit(
            "instance.join",
            "TJ002I",
            role=role,
            host_id=host_id,
            nodename=hostname,
            success=True,
            method="token",
            db_scope=None if scope.unscoped else scope.to_dict(),
            **{"addr.remote": remote},
        )
        return cert, host_id
