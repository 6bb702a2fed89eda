"""Join tokens (`pctl tokens`) and joining: a token plus a public key become a host certificate."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

from common.errors import AccessDenied, AlreadyExists, BadParameter, NotFound
from common.identity import Identity
from common.tls import load_public_key
from pteleport.auth.certs import CertService
from pteleport.auth.context import AuthContext, secret_key

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


def token_doc(token: str, roles: list[str], expires: datetime | None, labels: dict | None = None) -> dict:
    meta: dict[str, Any] = {"name": token}
    if expires is not None:
        meta["expires"] = expires.isoformat()
    spec: dict[str, Any] = {"roles": roles, "join_method": "token"}
    if labels:
        spec["suggested_labels"] = labels
    return {"kind": "token", "version": "v2", "metadata": meta, "spec": spec}


class TokenService:
    def __init__(self, ctx: AuthContext, certs: CertService) -> None:
        self.ctx = ctx
        self.certs = certs

    def add(
        self, actor: Identity, types: list[str], ttl: timedelta | None, value: str | None, labels: dict | None = None
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
        doc = token_doc(token, roles, expires, labels)
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

    def join(self, token: str, role: str, host_id: str, hostname: str, public_key_pem: str, remote: str) -> bytes:
        """Check the token's type and expiry, then sign a host certificate for the joining process."""
        key = load_public_key(public_key_pem)
        try:
            doc = self._find(token)
        except AccessDenied as exc:
            self.ctx.emit(
                "instance.join",
                "TJ002E",
                role=role,
                host_id=host_id,
                success=False,
                error=str(exc),
                **{"addr.remote": remote},
            )
            raise
        if role not in doc["spec"]["roles"]:
            raise AccessDenied(
                f"this token cannot join a {role} service (it allows {', '.join(doc['spec']['roles'])}); "
                "create one with the right --type"
            )
        cert = self.certs.sign_host(host_id, role, key, [hostname] if hostname else [])
        self.ctx.emit(
            "instance.join",
            "TJ002I",
            role=role,
            host_id=host_id,
            nodename=hostname,
            success=True,
            method="token",
            **{"addr.remote": remote},
        )
        return cert
