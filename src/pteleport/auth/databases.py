"""Databases: dynamic `db` resources, agents' heartbeats (db_server), and what a user may see."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.errors import AccessDenied, AlreadyExists, BadParameter, NotFound
from common.identity import Identity
from pteleport.auth.context import AuthContext
from pteleport.auth.hosts import HostService
from pteleport.storage.base import Item

# pteleport's own events (Teleport has none for registrations): a host registering a database.
DB_SERVER_CREATE = "db_server.create"
DB_SERVER_CREATE_CODE = "PDS00I"
DB_SERVER_CREATE_FAILURE_CODE = "PDS00W"

HEARTBEAT_TTL = timedelta(seconds=30)  # agents heartbeat every 5 s
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DbMetadata(_Strict):
    name: str
    description: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    expires: str | None = None
    revision: str | None = None
    namespace: str | None = None


class DbTLS(_Strict):
    mode: Literal["verify-full", "verify-ca", "insecure"] = "verify-full"
    ca_cert: str | None = None
    server_name: str | None = None
    trust_system_cert_pool: bool | None = None


class DbAWS(_Strict):
    region: str | None = None
    assume_role_arn: str | None = None
    external_id: str | None = None
    account_id: str | None = None
    rds: dict[str, Any] | None = None


class DbAdminUser(_Strict):
    """``spec.admin_user``: the database role the agent connects as to create users (docs/auto-users.md)."""

    name: str = Field(min_length=1)
    default_database: str | None = None


class DbSpec(_Strict):
    protocol: Literal["postgres"] = "postgres"
    uri: str
    tls: DbTLS | None = None
    aws: DbAWS | None = None
    ca_cert: str | None = None
    dynamic_labels: dict[str, Any] | None = None
    admin_user: DbAdminUser | None = None


class DbResource(_Strict):
    kind: Literal["db"]
    version: Literal["v3"]
    metadata: DbMetadata
    spec: DbSpec
    status: dict[str, Any] | None = None


def parse_db(doc: dict) -> dict:
    name = (doc.get("metadata") or {}).get("name", "?") if isinstance(doc, dict) else "?"
    try:
        model = DbResource.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            raise BadParameter(f'db "{name}": unknown field {loc}') from None
        raise BadParameter(f'db "{name}": {loc}: {first["msg"]}') from None
    if not NAME_RE.match(model.metadata.name):
        raise BadParameter(f'db "{model.metadata.name}": metadata.name must be lower-case letters, digits and dashes')
    host, _, port = model.spec.uri.rpartition(":")
    if not host or not port.isdigit():
        raise BadParameter(f'db "{model.metadata.name}": spec.uri must be HOST:PORT (got "{model.spec.uri}")')
    return model.model_dump(exclude_none=True)


class RegistrationIndex:
    """Which hosts have a live registration for each database, kept in memory for the proxy.

    The proxy routes a database session only to a host found here, and ``ptsh db ls``
    lists from here (``DatabaseService.list_for``), so a proxy lists what it routes to.
    ``build`` reads storage (call it off the event loop, or right after a heartbeat this
    process stored); ``run`` rebuilds it every ``poll_every`` seconds and when ``poke``d (the
    backend's change feed: registrations stored by any process), at most once per ``MIN_GAP``.

    A build reads every registration but parses none: the database name and the host id
    are the two parts of the key (``db_servers/<name>/<host id>``, as ``heartbeat`` stores
    them). ``documents`` parses only what changed since it was last called: heartbeats
    renew every registration every few seconds, but a listing needs each one parsed once.
    """

    MIN_GAP = 0.5  # heartbeats renew registrations all the time: one rebuild per burst

    def __init__(self, ctx: AuthContext) -> None:
        self.ctx = ctx
        self._hosts: dict[str, list[tuple[str, datetime | None]]] = {}
        self._items: list[Item] | None = None  # None: never built
        # key -> (the stored bytes, their parsed document); only ``documents`` touches it.
        self._parsed: dict[str, tuple[bytes, dict[str, Any]]] = {}
        self._parsed_lock = threading.Lock()
        # Builds run in worker threads (after a heartbeat, and every second): one at a time,
        # so an older read never replaces a newer one. Readers take the dict as it is.
        self._build_lock = threading.Lock()
        self._wake: Any = None

    def poke(self) -> None:
        """The change feed says registrations changed: rebuild soon (call on the loop)."""
        if self._wake is not None:
            self._wake.set()

    def build(self) -> None:
        store = self.ctx.db_servers
        with self._build_lock:
            items = store.backend.get_range(store.prefix)
            index: dict[str, list[tuple[str, datetime | None]]] = {}
            for item in items:
                name, _, host_id = item.key[len(store.prefix) :].partition("/")
                index.setdefault(name, []).append((host_id, item.expires))
            self._hosts, self._items = index, items

    def hosts_for(self, name: str) -> list[str]:
        now = self.ctx.clock()
        return [host for host, expires in self._hosts.get(name, []) if expires is None or expires > now]

    def documents(self) -> list[dict[str, Any]]:
        """The live registrations (``db_server`` documents) as of the last build, in key order
        (read from storage now when no ``run`` keeps the index current).

        The documents are shared between calls: read them, do not change them.
        """
        if self._items is None or self._wake is None:
            self.build()  # never built, or nothing keeps it current (no ``run``): read storage now
        items = self._items or []
        now = self.ctx.clock()
        with self._parsed_lock:
            before, after = self._parsed, {}
            out = []
            for item in items:
                if item.expires is not None and item.expires <= now:
                    continue
                seen = before.get(item.key)
                if seen is None or seen[0] != item.value:
                    seen = (item.value, json.loads(item.value))
                after[item.key] = seen
                out.append(seen[1])
            self._parsed = after
        return out

    async def run(self, poll_every: float = 1.0) -> None:
        import asyncio
        import contextlib
        import logging

        self._wake = asyncio.Event()
        while True:
            try:
                await asyncio.to_thread(self.build)
            except Exception as exc:
                logging.getLogger("pteleport.auth").warning("could not read database registrations: %s", exc)
            await asyncio.sleep(self.MIN_GAP)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(poll_every - self.MIN_GAP, 0.0))
            self._wake.clear()


class DatabaseService:
    def __init__(self, ctx: AuthContext, hosts: HostService) -> None:
        self.ctx = ctx
        self.hosts = hosts
        self.registrations = RegistrationIndex(ctx)
        self._refusals_seen: set[tuple[str, str, str]] = set()
        self._seen_lock = threading.Lock()
        self._checkers: dict[str, Any] = {}  # see ``_checker``
        # Called after a heartbeat changed what is registered (the proxy's index is rebuilt).
        self.on_registered: Callable[[], None] | None = None

    # --- dynamic resources ---------------------------------------------------------------
    def put_resource(self, actor: Identity, doc: dict, force: bool) -> str:
        doc = parse_db(doc)
        name = doc["metadata"]["name"]
        exists = self.ctx.databases.exists(name)
        if exists and not force:
            raise AlreadyExists(f'db "{name}" already exists; pass -f/--force to overwrite it')
        self.ctx.authorize(actor, "db", "update" if exists else "create")
        doc["metadata"].setdefault("labels", {})["teleport.dev/origin"] = "dynamic"
        self.ctx.databases.put(name, doc)
        self.ctx.emit(
            "db.update" if exists else "db.create", "TDB04I" if exists else "TDB03I", user=actor.username, name=name
        )
        return "updated" if exists else "created"

    def resources(self, actor: Identity) -> list[dict]:
        self.ctx.authorize(actor, "db", "list")
        return self.ctx.databases.list()

    def remove(self, actor: Identity, name: str) -> None:
        self.ctx.authorize(actor, "db", "delete")
        try:
            self.ctx.databases.delete(name)
        except NotFound:
            raise NotFound(f'db "{name}" does not exist; "pctl get db" lists databases') from None
        self.ctx.emit("db.delete", "TDB05I", user=actor.username, name=name)

    # --- heartbeats (registrations) ---------------------------------------------------------------
    def heartbeat(self, actor: Identity, databases: list[dict], hostname: str) -> list[dict[str, str]]:
        """A database service says which databases it serves now; entries expire unless renewed.

        Each database is registered only if ``HostService.may_serve`` allows it (scope and
        reservations); the others come back as ``{"name", "reason"}`` so the agent can say why.
        The first registration of a database by a host is audited (``db_server.create``).
        """
        self.ctx.authorize(actor, "db_server", "create")
        if actor.system_role != "Db":
            raise AccessDenied(f"a {actor.system_role or 'host'} identity may not register databases")
        now = self.ctx.clock()
        expires = now + HEARTBEAT_TTL
        scope = self.hosts.scope_of(actor)
        reserved = self.hosts.reserved()
        # Only the registrations of the names this host serves now or served before are read
        # (not every registration in the cluster: a heartbeat costs the same with 10 or 10,000
        # databases registered).
        wanted = {str((db.get("metadata") or {}).get("name", "")) for db in databases if isinstance(db, dict)}
        noted = self.hosts.registered_names(actor.username)
        live = {name: self.servers_named(name) for name in (wanted | noted) if name}
        mine = {name for name, servers in live.items() if any(s["spec"]["host_id"] == actor.username for s in servers)}
        served: set[str] = set()
        refused: list[dict[str, str]] = []
        for db in databases:
            db = parse_db(db)
            name = db["metadata"]["name"]
            db, conflict = self._as_registered(db)
            reason = conflict or self.hosts.may_serve(
                actor, scope, name, db["metadata"].get("labels", {}), reserved, live.get(name, [])
            )
            if reason is not None:
                refused.append({"name": name, "reason": reason})
                self._audit_refusal(actor, name, reason)
                continue
            served.add(name)
            self.ctx.db_servers.put(
                f"{name}/{actor.username}",
                {
                    "kind": "db_server",
                    "version": "v3",
                    "metadata": {"name": name, "expires": expires.isoformat()},
                    "spec": {
                        "host_id": actor.username,
                        "hostname": hostname,
                        "database": db,
                        "scope": None if scope.unscoped else scope.to_dict(),
                    },
                },
                expires=expires,
            )
            # (a renewal: the host record already names it, so it is not read again per database)
            if name not in noted and self.hosts.note_registered(actor.username, name, hostname, now):
                self.ctx.emit(
                    DB_SERVER_CREATE,
                    DB_SERVER_CREATE_CODE,
                    user=actor.username,
                    host_id=actor.username,
                    server_hostname=hostname,
                    name=name,
                    db_uri=db["spec"].get("uri"),
                    db_scope=None if scope.unscoped else scope.to_dict(),
                )
        for name in mine - served:
            try:
                self.ctx.db_servers.delete(f"{name}/{actor.username}")
            except NotFound:
                pass  # it expired meanwhile
        if served != mine:
            # Something was registered or withdrawn: the indexes (here, and the proxy's, which
            # confirms) know it before this returns. A renewal only moves expiries: the
            # change feed brings those to every index within a second, well inside the TTL.
            self.registrations.build()
            if self.on_registered is not None:
                self.on_registered()
        return refused

    def _as_registered(self, db: dict) -> tuple[dict, str | None]:
        """The database as it is registered: a dynamic resource's own definition wins over the agent's copy."""
        name = db["metadata"]["name"]
        try:
            stored = self.ctx.databases.get(name)
        except NotFound:
            return db, None
        origin = db["metadata"].get("labels", {}).get("teleport.dev/origin")
        if origin != "dynamic":
            return db, (
                f'database "{name}" is also a dynamic resource ("pctl get db/{name}"); '
                "give the database in this service's configuration another name"
            )
        return stored, None

    def _audit_refusal(self, actor: Identity, name: str, reason: str) -> None:
        """Once per host, database and reason (a refused agent heartbeats every few seconds)."""
        key = (actor.username, name, reason)
        with self._seen_lock:
            if key in self._refusals_seen:
                return
            if len(self._refusals_seen) > 10_000:
                self._refusals_seen.clear()
            self._refusals_seen.add(key)
        self.ctx.emit(
            DB_SERVER_CREATE,
            DB_SERVER_CREATE_FAILURE_CODE,
            user=actor.username,
            host_id=actor.username,
            name=name,
            success=False,
            error=reason,
        )

    def servers(self) -> list[dict]:
        return self.ctx.db_servers.list()

    def servers_named(self, name: str) -> list[dict]:
        """The live registrations of the database ``name`` (one key range, not every registration)."""
        store = self.ctx.db_servers
        return [json.loads(item.value) for item in store.backend.get_range(store.key(name) + "/")]

    def servers_for(self, name: str) -> list[dict]:
        return [d for d in self.servers() if d["metadata"]["name"] == name]

    def find(self, name: str) -> dict:
        """The database as its (newest) live agent describes it."""
        servers = self.servers_for(name)
        if servers:
            return servers[0]["spec"]["database"]
        try:
            return self.ctx.databases.get(name)
        except NotFound:
            raise NotFound(f'database "{name}" not found; run "ptsh db ls" to see the databases you can use') from None

    def list_for(self, actor: Identity) -> list[dict]:
        """Databases with a live agent that the actor's roles let them see, with allowed users.

        From the registration index (what this proxy routes to: at most a change-feed
        round, about a second, behind storage), so a listing waits for no storage read but
        the caller's roles. Databases with the same labels get the same answer from RBAC,
        so it is asked once per set of labels.
        """
        checker = None if actor.is_admin else self._checker(actor)
        by_name: dict[str, dict] = {}
        hosts: dict[str, list[str]] = {}
        for server in self.registrations.documents():
            name = server["metadata"]["name"]
            by_name.setdefault(name, server["spec"]["database"])
            hosts.setdefault(name, []).append(server["spec"]["hostname"] or server["spec"]["host_id"])
        decided: dict[tuple[tuple[str, str], ...], dict[str, Any] | None] = {}
        result = []
        for name in sorted(by_name):
            db = dict(by_name[name])
            labels = db["metadata"].get("labels", {})
            key = tuple(sorted(labels.items()))
            if key not in decided:
                decided[key] = self._access(checker, labels)
            access = decided[key]
            if access is None:
                continue
            db.update(access)
            db["agents"] = sorted(hosts[name])
            result.append(db)
        return result

    def _checker(self, actor: Identity) -> Any:
        """The actor's AccessChecker; kept while the roles are unchanged, when the access
        snapshot is kept current (its roles version moves with every role change), so that a
        listing does not wait behind heartbeats for the storage connection to read roles."""
        access = self.ctx.access
        if not access.kept_current:
            return self.ctx.checker(actor)
        version = access.current().roles_version
        kept = self._checkers
        if kept.get("version") != version or len(kept) > 1000:
            kept = self._checkers = {"version": version}  # swapped whole: other threads keep theirs
        key = repr((tuple(actor.roles), sorted(actor.traits.items())))
        checker = kept.get(key)
        if checker is None:
            checker = kept[key] = self.ctx.checker(actor)
        return checker

    @staticmethod
    def _access(checker: Any, labels: dict[str, str]) -> dict[str, Any] | None:
        """``users`` and ``names`` of a listed database with ``labels``; None: not listed."""
        if checker is None:
            return {"users": {"allowed": ["*"], "denied": []}, "names": {"allowed": ["*"], "denied": []}}
        if not checker.can_see_db(labels):
            return None
        allowed, denied = checker.allowed_db_users(labels)
        names_allowed, names_denied = checker.allowed_db_names(labels)
        return {"users": {"allowed": allowed, "denied": denied},
                "names": {"allowed": names_allowed, "denied": names_denied}}
