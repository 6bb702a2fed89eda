"""Automatic database users: create or update a session's PostgreSQL role, and retire it after.

When a session's plan (``auth.db_users.AutoUserPlan``) says the db user is created
automatically, the agent connects as the database's admin user (``spec.admin_user.name``),
with the same credentials it would use for any db user (client certificate, IAM token,
password file), and under a session-level advisory lock keyed by the user name:

1. checks that the admin user may create roles (CREATEROLE or superuser);
2. makes the marker group ``teleport-auto-user`` (NOLOGIN) if it is missing;
3. refuses a role of that name that is not in the marker group (someone else's role);
4. creates the role (LOGIN, in the marker group) or gives it LOGIN again;
5. grants exactly the plan's db roles (plus ``rds_iam`` on RDS) and revokes every other
   membership but the marker group, in one transaction;
6. opens the user's own connection, still holding the lock, then releases it.

``release`` runs when a session ends. When no other session of the user is open (this
agent's count, then ``pg_stat_activity`` for sessions through other agents), it revokes
every membership but the marker group and sets NOLOGIN (mode ``keep``), or drops the role
(``best_effort_drop``), disabling it instead when PostgreSQL refuses because the role owns
objects or holds privileges. Each outcome is one line in the agent log.

Two sessions of one user starting at once queue on the advisory lock, across agents too.
"""

# Statements are built from names quoted by adminsql.ident and adminsql.literal (utility
# statements take no bound parameters), which is what S608 cannot see.
# ruff: noqa: S608

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from common.errors import AccessDenied, ConnectionProblem, NotFound, PteleportError
from pteleport.auth.db_users import AutoUserPlan
from pteleport.dbagent.adminsql import AdminSession, SqlError, ident, literal
from pteleport.dbagent.credentials import Credentials, LocalSettings, split_uri
from pteleport.dbagent.upstream import connect_upstream

log = logging.getLogger("pteleport.dbagent.autousers")
MARKER_GROUP = "teleport-auto-user"
RDS_IAM = "rds_iam"
LOCK_SPACE = "hashtext('pteleport-auto-user')"
DEPENDENT_OBJECTS = "2BP01"  # DROP ROLE: the role owns objects or holds privileges
DUPLICATE_OBJECT = "42710"
UNIQUE_VIOLATION = "23505"
LINGER_WAIT = 3.0  # seconds a just-closed backend gets to leave pg_stat_activity
T = TypeVar("T")


class AutoUsers:
    """Provisioning for one agent; ``active`` counts this agent's open sessions per (database, user)."""

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials
        self.active: dict[tuple[str, str], int] = {}

    async def activate(
        self, plan: AutoUserPlan, db: dict, local: LocalSettings, database: str, connect: Callable[[], Awaitable[T]]
    ) -> T:
        """Provision ``plan``'s user, then ``connect()`` as it while still holding the lock; count the session."""
        name = db["metadata"]["name"]
        admin = await self._admin(plan, db, local, database)
        provisioned = False
        try:
            await self._lock(admin, plan.db_user)
            try:
                try:
                    granted = await self._provision(admin, plan, db)
                except SqlError as err:
                    raise refusal_from_sql(err, name) from None
                provisioned = True
                log.info(
                    "database user %s in %s ready (mode %s): roles %s", plan.db_user, name, plan.mode, granted or "none"
                )
                result = await connect()
                key = (name, plan.db_user)
                self.active[key] = self.active.get(key, 0) + 1
                return result
            except BaseException:
                if provisioned and self.active.get((name, plan.db_user), 0) == 0:
                    with contextlib.suppress(Exception):
                        await self._retire(admin, plan, name)
                raise
            finally:
                with contextlib.suppress(Exception):
                    await admin.query(f"SELECT pg_advisory_unlock({LOCK_SPACE}, hashtext({literal(plan.db_user)}))")
        finally:
            await admin.close()

    async def release(self, plan: AutoUserPlan, db: dict, local: LocalSettings, database: str) -> None:
        """A session of ``plan``'s user ended: retire the user unless another session is open."""
        name = db["metadata"]["name"]
        key = (name, plan.db_user)
        self.active[key] = max(self.active.get(key, 0) - 1, 0)
        if self.active[key] > 0:
            return
        try:
            admin = await self._admin(plan, db, local, database)
        except PteleportError as err:
            log.warning("could not retire database user %s in %s: %s", plan.db_user, name, err.message)
            return
        try:
            await self._lock(admin, plan.db_user)
            if self.active.get(key, 0) == 0:
                await self._retire(admin, plan, name)
        except (PteleportError, SqlError) as err:
            log.warning("could not retire database user %s in %s: %s", plan.db_user, name, err)
        finally:
            with contextlib.suppress(Exception):
                await admin.query(f"SELECT pg_advisory_unlock({LOCK_SPACE}, hashtext({literal(plan.db_user)}))")
            await admin.close()
            if self.active.get(key) == 0:
                self.active.pop(key, None)

    # --- steps -------------------------------------------------------------------------------

    async def _admin(self, plan: AutoUserPlan, db: dict, local: LocalSettings, database: str) -> AdminSession:
        name = db["metadata"]["name"]
        host, port = split_uri(db["spec"]["uri"])
        admin_db = plan.admin_database or database
        creds = self.credentials
        try:
            tls = await creds.tls_for(db, local)
            tls, password = await creds.secret_for(db, local, plan.admin_user, tls)
            conn = await connect_upstream(
                host,
                port,
                plan.admin_user,
                admin_db,
                tls,
                password=password,
                startup_params={"application_name": "pteleport-auto-users"},
            )
        except AccessDenied as err:
            raise AccessDenied(
                f'the database service could not log in to database "{name}" as its admin user'
                f' "{plan.admin_user}" to create your database user: {err.message}. Ask an admin to create that'
                f" role (CREATE ROLE {ident(plan.admin_user)} LOGIN CREATEROLE) and let it log in the way the"
                " database service connects, or fix spec.admin_user.name",
                err.detail,
            ) from None
        except PteleportError as err:
            raise type(err)(
                f'the database service could not connect to database "{name}" as its admin user'
                f' "{plan.admin_user}": {err.message}',
                err.detail,
            ) from None
        return AdminSession(conn, f"{host}:{port}")

    @staticmethod
    async def _lock(admin: AdminSession, user: str) -> None:
        await admin.query(f"SELECT pg_advisory_lock({LOCK_SPACE}, hashtext({literal(user)}))")

    async def _provision(self, admin: AdminSession, plan: AutoUserPlan, db: dict) -> list[str]:
        name = db["metadata"]["name"]
        user = plan.db_user
        can = await admin.query("SELECT rolcreaterole, rolsuper FROM pg_roles WHERE rolname = current_user")
        if not can or (can[0][0] != "t" and can[0][1] != "t"):
            raise AccessDenied(
                f'the admin user "{plan.admin_user}" of database "{name}" lacks CREATEROLE, so it cannot create'
                f" your database user; ask an admin to run: ALTER ROLE {ident(plan.admin_user)} CREATEROLE"
            )
        await self._ensure_marker(admin)
        wanted = list(dict.fromkeys(plan.db_roles))
        if (db["spec"].get("aws") or {}).get("region") and RDS_IAM not in wanted:
            wanted.append(RDS_IAM)
        await admin.query("BEGIN")
        try:
            row = await admin.query(
                "SELECT r.rolname, EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid"
                f" WHERE m.member = r.oid AND g.rolname = {literal(MARKER_GROUP)})"
                f" FROM pg_roles r WHERE r.rolname = {literal(user)}"
            )
            if row and row[0][1] != "t":
                raise AccessDenied(
                    f'database "{name}" already has a role "{user}" that pteleport did not create (it is not in'
                    f' the group "{MARKER_GROUP}"), so it will not take it over; ask an admin to rename or drop'
                    f" that role, or to hand it to pteleport: GRANT {ident(MARKER_GROUP)} TO {ident(user)}"
                )
            if wanted:
                found = {
                    r[0]
                    for r in await admin.query(
                        "SELECT rolname FROM pg_roles WHERE rolname IN (" + ", ".join(literal(w) for w in wanted) + ")"
                    )
                }
                missing = [w for w in wanted if w not in found]
                if missing:
                    raise NotFound(
                        f'database "{name}" has no role {", ".join(repr(m) for m in missing)} to grant your'
                        " database user; ask an admin to create it there or to remove it from the db_roles"
                        " of your pteleport roles"
                    )
            if row:
                await admin.query(f"ALTER ROLE {ident(user)} LOGIN")
            else:
                await admin.query(f"CREATE ROLE {ident(user)} LOGIN IN ROLE {ident(MARKER_GROUP)}")
            held = await self._memberships(admin, user)
            for role in held:
                if role not in wanted and role != MARKER_GROUP:
                    await admin.query(f"REVOKE {ident(role)} FROM {ident(user)}")
            for role in wanted:
                if role not in held:
                    await admin.query(f"GRANT {ident(role)} TO {ident(user)}")
            await admin.query("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                await admin.query("ROLLBACK")
            raise
        return wanted

    @staticmethod
    async def _ensure_marker(admin: AdminSession) -> None:
        if await admin.value(f"SELECT 1 FROM pg_roles WHERE rolname = {literal(MARKER_GROUP)}"):
            return
        try:
            await admin.query(f"CREATE ROLE {ident(MARKER_GROUP)} NOLOGIN")
            log.info("created the group role %s for automatic database users", MARKER_GROUP)
        except SqlError as err:
            if err.code not in (DUPLICATE_OBJECT, UNIQUE_VIOLATION):  # another agent made it just now
                raise

    @staticmethod
    async def _memberships(admin: AdminSession, user: str) -> list[str]:
        rows = await admin.query(
            "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid"
            f" JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = {literal(user)} ORDER BY 1"
        )
        return [r[0] for r in rows if r[0] is not None]

    async def _retire(self, admin: AdminSession, plan: AutoUserPlan, name: str) -> None:
        user = plan.db_user
        others = await self._open_sessions(admin, user)
        if others:
            log.info("database user %s in %s left enabled: %d other session(s) of it are open", user, name, others)
            return
        if plan.mode == "best_effort_drop":
            try:
                await admin.query(f"DROP ROLE IF EXISTS {ident(user)}")
                log.info("database user %s in %s dropped at the end of its last session", user, name)
                return
            except SqlError as err:
                if err.code != DEPENDENT_OBJECTS:
                    raise
                log.info(
                    "database user %s in %s could not be dropped (%s); disabling it instead", user, name, err.message
                )
        revoked = await self._disable(admin, user)
        log.info(
            "database user %s in %s disabled at the end of its last session: revoked %s, set NOLOGIN",
            user,
            name,
            revoked or "no roles",
        )

    @staticmethod
    async def _open_sessions(admin: AdminSession, user: str) -> int:
        """Sessions of ``user`` still open (a backend just closed may take a moment to leave the view)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINGER_WAIT
        while True:
            count = int(
                await admin.value(f"SELECT count(*) FROM pg_stat_activity WHERE usename = {literal(user)}") or 0
            )
            if count == 0 or loop.time() >= deadline:
                return count
            await asyncio.sleep(0.1)

    async def _disable(self, admin: AdminSession, user: str) -> list[str]:
        await admin.query("BEGIN")
        try:
            held = [r for r in await self._memberships(admin, user) if r != MARKER_GROUP]
            for role in held:
                await admin.query(f"REVOKE {ident(role)} FROM {ident(user)}")
            await admin.query(f"ALTER ROLE {ident(user)} NOLOGIN")
            await admin.query("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                await admin.query("ROLLBACK")
            raise
        return held


def refusal_from_sql(err: SqlError, name: str) -> ConnectionProblem:
    """An unexpected server error while provisioning, as one sentence."""
    return ConnectionProblem(
        f'database "{name}" refused to provision your database user: "{err.message}" (SQLSTATE {err.code});'
        " check the admin user's privileges and the database server log"
    )
