"""What every part of the auth service shares: stores, CAs, clock, audit, settings, authorization."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from common.errors import AccessDenied, NotFound
from common.identity import Identity
from pteleport.audit.events import make_event
from pteleport.audit.log import AuditLog
from pteleport.auth.access import AccessStateSource
from pteleport.ca.authority import CertAuthority
from pteleport.rbac.checker import AccessChecker
from pteleport.rbac.presets import preset_roles
from pteleport.rbac.role import Role, parse_role, role_to_dict
from pteleport.services.store import JsonStore
from pteleport.storage.base import Backend

Clock = Callable[[], datetime]


@dataclass
class AuthSettings:
    cluster_name: str
    public_addr: str
    second_factor: str = "otp"
    max_attempts: int = 5
    lockout: timedelta = timedelta(minutes=20)
    audit_retention: timedelta = timedelta(days=90)
    static_tokens: list[str] = field(default_factory=list)
    iam_sts_override: str | None = None  # tests only: where IAM join requests go instead of AWS STS


def secret_key(secret: str) -> str:
    """Secrets are looked up by their SHA-256, so a lookup leaks nothing by timing."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class AuthContext:
    """Shared state of the auth service's parts."""

    def __init__(self, backend: Backend, audit: AuditLog, clock: Clock, settings: AuthSettings) -> None:
        self.backend = backend
        self.audit = audit
        self.clock = clock
        self.settings = settings
        self.users = JsonStore(backend, "users")
        self.secrets = JsonStore(backend, "user_secrets")
        self.login_state = JsonStore(backend, "user_login_state")
        self.roles = JsonStore(backend, "roles")
        self.tokens = JsonStore(backend, "tokens")
        self.user_tokens = JsonStore(backend, "user_tokens")
        self.databases = JsonStore(backend, "db")
        self.db_servers = JsonStore(backend, "db_servers")
        self.cas_store = JsonStore(backend, "cas")
        self.locks = JsonStore(backend, "locks")
        self.hosts = JsonStore(backend, "hosts")
        self.access_requests = JsonStore(backend, "access_requests")
        self._cas: dict[str, CertAuthority] = {}
        # Locks, users, roles and access requests feed the snapshot every hop checks certificates against;
        # any write to them rebuilds it at once.
        self.access = AccessStateSource(self.users, self.locks, self.roles, clock, self.access_requests)
        for store in (self.users, self.locks, self.roles, self.access_requests):
            store.on_write = self.access.changed

    @property
    def cluster_name(self) -> str:
        return self.settings.cluster_name

    # --- certificate authorities -------------------------------------------------
    def ca(self, ca_type: str) -> CertAuthority:
        if ca_type not in self._cas:
            doc = self.cas_store.get(ca_type)
            self._cas[ca_type] = CertAuthority(ca_type, doc["cluster_name"], doc["cert"].encode(), doc["key"].encode())
        return self._cas[ca_type]

    def ca_bundle(self, *types: str) -> bytes:
        return b"".join(self.ca(t).cert_pem for t in types)

    # --- audit ----------------------------------------------------------------------
    def emit(self, event: str, code: str, **fields: Any) -> None:
        self.audit.emit(make_event(event, code, clock=self.clock, cluster_name=self.cluster_name, **fields))

    # --- roles and authorization ---------------------------------------------------------
    def role(self, name: str) -> Role:
        try:
            return parse_role(self.roles.get(name))
        except NotFound:
            for preset in preset_roles():
                if preset.metadata.name == name:
                    return preset
            raise NotFound(f'role "{name}" does not exist') from None

    def all_roles(self) -> list[Role]:
        stored = {doc["metadata"]["name"]: parse_role(doc) for doc in self.roles.list()}
        for preset in preset_roles():
            stored.setdefault(preset.metadata.name, preset)
        return [stored[name] for name in sorted(stored)]

    def checker_for(self, role_names: list[str] | tuple[str, ...], traits: dict[str, list[str]]) -> AccessChecker:
        roles = []
        for name in role_names:
            try:
                roles.append(self.role(name))
            except NotFound:
                continue  # a deleted role grants nothing
        return AccessChecker(roles, traits)

    def checker(self, actor: Identity) -> AccessChecker:
        return self.checker_for(actor.roles, actor.traits)

    def authorize(self, actor: Identity, resource: str, verb: str, context: dict | None = None) -> None:
        """Allow the admin identity everything, hosts only what ``host_may`` says, users by role rules."""
        if actor.is_admin:
            return
        if actor.is_host:
            if (resource, verb) in HOST_PERMISSIONS:
                return
            raise AccessDenied(f"a {actor.system_role or 'host'} identity may not {verb} {resource}")
        self.checker(actor).check_rule(resource, verb, context)

    def role_docs(self) -> list[dict]:
        return [role_to_dict(r) for r in self.all_roles()]


HOST_PERMISSIONS = {
    ("db_server", "create"),
    ("db_server", "delete"),
    ("db", "list"),
    ("db", "read"),
    ("role", "list"),
    ("role", "read"),
    ("event", "create"),
    ("db_client_cert", "create"),
}
