"""The auth service: one object that owns the cluster's state and composes its parts."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from common import __version__
from common.errors import AlreadyExists, NotFound
from common.identity import KIND_ADMIN, Identity
from common.tls import ca_pin, load_cert
from pteleport.audit.log import AuditLog
from pteleport.auth.audit import AuditService
from pteleport.auth.bots import BotService
from pteleport.auth.certs import CertService
from pteleport.auth.context import AuthContext, AuthSettings, Clock
from pteleport.auth.databases import DatabaseService
from pteleport.auth.hosts import HostService
from pteleport.auth.join_iam import IamJoinService
from pteleport.auth.locks import LockService
from pteleport.auth.login import LoginService
from pteleport.auth.requests import AccessRequestService
from pteleport.auth.resources import ResourceService
from pteleport.auth.tokens import TokenService
from pteleport.auth.users import UserService
from pteleport.ca.authority import CA_TYPES, new_authority, sign_identity
from pteleport.rbac.presets import preset_roles
from pteleport.rbac.role import role_to_dict
from pteleport.storage.base import Backend, Item

ADMIN_CERT_TTL = timedelta(days=365)


class AuthServer:
    def __init__(self, backend: Backend, audit: AuditLog, clock: Clock, settings: AuthSettings) -> None:
        self.ctx = AuthContext(backend, audit, clock, settings)
        self.access = self.ctx.access
        self.certs = CertService(self.ctx)
        self.locks = LockService(self.ctx, self.access)
        self.users = UserService(self.ctx, self.locks)
        self.login = LoginService(self.ctx, self.certs)
        self.hosts = HostService(self.ctx)
        self.tokens = TokenService(self.ctx, self.certs, self.hosts)
        self.iam_join = IamJoinService(self.ctx, self.tokens, settings.iam_sts_override)
        self.databases = DatabaseService(self.ctx, self.hosts)
        self.resources = ResourceService(self.ctx, self.users, self.tokens, self.databases, self.locks)
        self.audit = AuditService(self.ctx)
        self.bots = BotService(self.ctx, self.certs)
        self.requests = AccessRequestService(self.ctx, self.certs)

    @property
    def cluster_name(self) -> str:
        return self.ctx.cluster_name

    def init_cluster(self) -> None:
        """First start: cluster name, CAs and preset roles; later starts keep what exists."""
        backend = self.ctx.backend
        name = self.ctx.settings.cluster_name.encode()
        try:
            backend.create(Item("cluster/name", name))
        except AlreadyExists:
            self.ctx.settings.cluster_name = backend.get("cluster/name").value.decode()
        now = self.ctx.clock()
        for ca_type in CA_TYPES:
            if self.ctx.cas_store.exists(ca_type):
                continue
            ca = new_authority(ca_type, self.cluster_name, now)
            doc = {
                "type": ca_type,
                "cluster_name": self.cluster_name,
                "cert": ca.cert_pem.decode(),
                "key": ca.key_pem.decode(),
                "created": now.isoformat(),
            }
            try:
                self.ctx.cas_store.create(ca_type, doc)
            except AlreadyExists:
                pass
        for role in preset_roles():
            if not self.ctx.roles.exists(role.metadata.name):
                self.ctx.roles.put(role.metadata.name, role_to_dict(role))
        # Secrets at rest: earlier versions kept token values in the stored documents.
        self.tokens.scrub_stored()
        self.users.scrub_stored_tokens()

    def admin_identity_cert(self, public_key: Any) -> bytes:
        """The identity pctl uses on the auth host (written 0600 into the data dir)."""
        now = self.ctx.clock()
        identity = Identity(username="admin", roles=("editor",), kind=KIND_ADMIN, cluster_name=self.cluster_name)
        return sign_identity(self.ctx.ca("user"), public_key, identity, now, now + ADMIN_CERT_TTL)

    def public_cas(self) -> dict[str, str]:
        return {t: self.ctx.ca(t).cert_pem.decode() for t in CA_TYPES}

    def status(self) -> dict:
        cas = []
        for ca_type in CA_TYPES:
            doc = self.ctx.cas_store.get(ca_type)
            cert = load_cert(doc["cert"].encode())
            cas.append(
                {
                    "type": ca_type,
                    "created": doc.get("created"),
                    "rotation": "never updated",
                    "not_after": cert.not_valid_after_utc.isoformat(),
                    "pin": ca_pin(cert),
                }
            )
        return {
            "cluster_name": self.cluster_name,
            "version": __version__,
            "cas": cas,
            "ca_pin": ca_pin(self.ctx.ca("host").cert),
        }

    def whoami(self, actor: Identity) -> dict:
        return {
            "username": actor.username,
            "roles": list(actor.roles),
            "kind": actor.kind,
            "traits": actor.traits,
            "expires": actor.expires.isoformat() if actor.expires else None,
        }

    def user_record(self, name: str) -> dict:
        try:
            return self.ctx.users.get(name)
        except NotFound:
            raise NotFound(f'user "{name}" does not exist') from None


def dumps(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True)
