"""Issuing certificates: user, database-routed, host (join), db client, and `pctl auth sign`."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

from common.errors import AccessDenied, BadParameter, NotFound
from common.identity import KIND_HOST, DatabaseRoute, HostScope, Identity
from common.tls import INTERNAL_SNI, load_public_key
from pteleport.auth.context import AuthContext
from pteleport.auth.db_users import auto_user_plan
from pteleport.ca.authority import sign_identity, sign_plain

DEFAULT_TTL = timedelta(hours=12)
HOST_CERT_TTL = timedelta(days=365)
DB_CLIENT_TTL = timedelta(minutes=10)


class CertService:
    def __init__(self, ctx: AuthContext) -> None:
        self.ctx = ctx

    def capped_ttl(self, identity: Identity, requested: timedelta | None) -> timedelta:
        ttl = requested or DEFAULT_TTL
        if ttl <= timedelta(0):
            raise BadParameter("the certificate lifetime (--ttl) must be positive")
        cap = self.ctx.checker_for(identity.roles, identity.traits).max_session_ttl()
        return min(ttl, cap)

    def sign_user(self, identity: Identity, public_key_pem: str, ttl: timedelta, *, audit: bool = True) -> bytes:
        now = self.ctx.clock()
        key = load_public_key(public_key_pem)
        identity = replace(identity, cluster_name=self.ctx.cluster_name)
        self.ctx.access.check_locks(identity)  # a locked user or role gets no new certificate
        cert = sign_identity(self.ctx.ca("user"), key, identity, now, now + ttl)
        if audit:
            self.ctx.emit(
                "cert.create",
                "TC000I",
                cert_type="user",
                identity={
                    "user": identity.username,
                    "roles": list(identity.roles),
                    "expires": (now + ttl).isoformat(),
                    "route_to_database": _route_dict(identity.route),
                    **({"access_requests": list(identity.active_requests)} if identity.active_requests else {}),
                },
            )
        return cert

    def sign_host(
        self, host_id: str, system_role: str, public_key: Any, server_names: list[str], scope: HostScope | None = None
    ) -> bytes:
        now = self.ctx.clock()
        identity = Identity(
            username=host_id,
            roles=(system_role,),
            kind=KIND_HOST,
            cluster_name=self.ctx.cluster_name,
            system_role=system_role,
            host_scope=scope,
        )
        # Only a proxy serves the internal name: an agent's certificate is for client use, so a
        # stolen agent certificate cannot impersonate the proxy to other agents or to users.
        names = [INTERNAL_SNI, *server_names] if system_role == "Proxy" else []
        return sign_identity(self.ctx.ca("host"), public_key, identity, now, now + HOST_CERT_TTL, server_names=names)

    def db_cert(
        self,
        actor: Identity,
        public_key_pem: str,
        service_name: str,
        db_user: str,
        db_name: str,
        ttl: timedelta | None,
        databases: Any,
    ) -> tuple[bytes, DatabaseRoute]:
        """A user certificate routed to one database, issued only after the RBAC check."""
        if actor.is_host:
            raise AccessDenied("host identities cannot connect to databases")
        db = databases.find(service_name)
        checker = self.ctx.checker(actor)
        labels = db["metadata"].get("labels", {})
        if not actor.is_admin:
            if not checker.can_see_db(labels):
                raise NotFound(
                    f'database "{service_name}" not found; run "ptsh db ls" to see the databases you can use'
                )
            plan = auto_user_plan(checker, db, actor.username, db_user)
            if plan is not None:
                db_user = plan.db_user
            db_user, db_name = _pick_defaults(checker, labels, db_user, db_name, service_name)
            checker.check_db_access(service_name, labels, db_user, db_name, auto_user=plan is not None)
        elif not db_user:
            raise BadParameter("pass --db-user: the admin identity has no default db user")
        route = DatabaseRoute(service_name, db["spec"].get("protocol", "postgres"), db_user, db_name)
        remaining = actor.expires - self.ctx.clock() if actor.expires else DEFAULT_TTL
        ttl = min(ttl or remaining, remaining) if remaining > timedelta(0) else timedelta(minutes=1)
        cert = self.sign_user(actor.with_route(route), public_key_pem, ttl)
        return cert, route

    def db_client_cert(self, db_user: str, public_key_pem: str, database: str = "", host_id: str = "") -> bytes:
        """For an agent: a short-lived client certificate (CN = db user) from the db CA (audited)."""
        if not db_user:
            raise BadParameter("db_user is required")
        now = self.ctx.clock()
        cert = sign_plain(self.ctx.ca("db"), load_public_key(public_key_pem), db_user, now, now + DB_CLIENT_TTL)
        self.ctx.emit(
            "cert.create",
            "TC000I",
            cert_type="db_client",
            user=host_id or None,
            identity={"user": db_user, "expires": (now + DB_CLIENT_TTL).isoformat()},
            db_service=database or None,
        )
        return cert

    def db_server_cert(self, hosts: list[str], public_key_pem: str, ttl: timedelta) -> bytes:
        """`pctl auth sign --format=db --host=...`: a PostgreSQL server certificate from the db CA."""
        if not hosts:
            raise BadParameter("pass --host with the name(s) clients use to reach the database")
        now = self.ctx.clock()
        return sign_plain(
            self.ctx.ca("db"), load_public_key(public_key_pem), hosts[0], now, now + ttl, server_names=hosts
        )


def _route_dict(route: DatabaseRoute | None) -> dict[str, str] | None:
    if route is None:
        return None
    return {
        "service_name": route.service_name,
        "protocol": route.protocol,
        "username": route.username,
        "database": route.database,
    }


def _pick_defaults(checker: Any, labels: dict, db_user: str, db_name: str, service: str) -> tuple[str, str]:
    """When the roles allow exactly one concrete db user (or name), it is the default."""
    if not db_user:
        allowed, _denied = checker.allowed_db_users(labels)
        concrete = [u for u in allowed if u != "*" and not u.startswith("^")]
        if len(concrete) == 1 and "*" not in allowed:
            db_user = concrete[0]
        else:
            shown = ", ".join(allowed) if allowed else "none"
            raise BadParameter(f'pass --db-user: your roles allow these db users for "{service}": {shown}')
    if not db_name:
        allowed, _denied = checker.allowed_db_names(labels)
        concrete = [n for n in allowed if n != "*" and not n.startswith("^")]
        if len(concrete) == 1 and "*" not in allowed:
            db_name = concrete[0]
        else:
            shown = ", ".join(allowed) if allowed else "none"
            raise BadParameter(f'pass --db-name: your roles allow these db names for "{service}": {shown}')
    return db_user, db_name
