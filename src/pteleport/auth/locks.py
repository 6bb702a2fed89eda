"""Locks (`pctl lock`, `pctl locks ls|rm`, `kind: lock`): create, list, remove, and the lock a deletion leaves.

Every change is audited (``lock.created`` TLK00I, ``lock.deleted`` TLK01I) and pushed into
the access snapshot at once, so the proxy and the agents refuse the target within seconds.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from common.errors import BadParameter, NotFound
from common.identity import Identity
from pteleport.auth.access import AccessStateSource
from pteleport.auth.context import AuthContext
from pteleport.rbac.locks import DELETED_USER_LABEL, Lock, LockMetadata, LockSpec, LockTarget, lock_to_dict, parse_lock

LOCK_CREATED = ("lock.created", "TLK00I")
LOCK_DELETED = ("lock.deleted", "TLK01I")


class LockService:
    def __init__(self, ctx: AuthContext, access: AccessStateSource) -> None:
        self.ctx = ctx
        self.access = access

    def create(
        self,
        actor: Identity,
        user: str | None,
        role: str | None,
        message: str,
        ttl: timedelta | None,
        labels: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        self.ctx.authorize(actor, "lock", "create")
        if (user is None) == (role is None):
            raise BadParameter("pass exactly one of --user or --role, e.g. pctl lock --user=alice")
        if ttl is not None and ttl <= timedelta(0):
            raise BadParameter("--ttl must be positive, e.g. --ttl=1h")
        if role is not None:
            self.ctx.role(role)  # NotFound with a sentence for a role that does not exist
        now = self.ctx.clock()
        lock = Lock(
            metadata=LockMetadata(name=str(uuid.uuid4()), labels=labels or {}),
            spec=LockSpec(
                target=LockTarget(user=user, role=role),
                message=message.strip(),
                expires=now + ttl if ttl is not None else None,
                created_at=now,
                created_by=actor.username,
            ),
        )
        return self._store(actor, lock)

    def _store(self, actor: Identity, lock: Lock) -> dict[str, Any]:
        doc = lock_to_dict(lock)
        self.ctx.locks.put(lock.name, doc, expires=lock.spec.expires)
        self.access.changed()
        self.ctx.emit(
            *LOCK_CREATED,
            user=actor.username,
            name=lock.name,
            target=lock.spec.target.model_dump(exclude_none=True),
            message=lock.spec.message or None,
            expires=lock.spec.expires.isoformat() if lock.spec.expires else None,
        )
        return doc

    def put_resource(self, actor: Identity, doc: dict, force: bool) -> str:
        """`pctl create` of a lock document (its name is kept; created_* are filled in)."""
        lock = parse_lock(doc)
        exists = self.ctx.locks.exists(lock.name)
        self.ctx.authorize(actor, "lock", "update" if exists else "create")
        if exists and not force:
            from common.errors import AlreadyExists

            raise AlreadyExists(f'lock "{lock.name}" already exists; pass -f/--force to overwrite it')
        spec = lock.spec.model_copy(
            update={
                "created_at": lock.spec.created_at or self.ctx.clock(),
                "created_by": lock.spec.created_by or actor.username,
            }
        )
        self._store(actor, lock.model_copy(update={"spec": spec}))
        return "updated" if exists else "created"

    def list(self, actor: Identity) -> list[dict[str, Any]]:
        self.ctx.authorize(actor, "lock", "list")
        now = self.ctx.clock()
        locks = [parse_lock(doc) for doc in self.ctx.locks.list()]
        live = [lk for lk in locks if lk.in_force(now)]
        return [lock_to_dict(lk) for lk in sorted(live, key=lambda lk: (lk.spec.created_at or now, lk.name))]

    def remove(self, actor: Identity, name: str) -> None:
        self.ctx.authorize(actor, "lock", "delete")
        try:
            doc = self.ctx.locks.get(name)
            self.ctx.locks.delete(name)
        except NotFound:
            raise NotFound(f'lock "{name}" does not exist; "pctl locks ls" lists locks') from None
        self.access.changed()
        target = doc.get("spec", {}).get("target")
        self.ctx.emit(*LOCK_DELETED, user=actor.username, name=name, target=target)

    # --- users that are deleted and created again ------------------------------------------
    def lock_deleted_user(self, actor: Identity, name: str, ttl: timedelta) -> None:
        """A deleted user's certificates stop working everywhere (and the lock says why)."""
        self.create(
            actor,
            name,
            None,
            f'user "{name}" was deleted',
            ttl,
            labels={DELETED_USER_LABEL: "true"},
        )

    def clear_deleted_user(self, actor: Identity, name: str) -> None:
        """A new user of the same name: the deletion's lock goes (older certificates stay refused by issue time)."""
        for key, doc, _item in list(self.ctx.locks.items()):
            labels = doc.get("metadata", {}).get("labels") or {}
            if labels.get(DELETED_USER_LABEL) == "true" and doc.get("spec", {}).get("target", {}).get("user") == name:
                try:
                    self.ctx.locks.delete(key)
                except NotFound:
                    continue
                self.ctx.emit(*LOCK_DELETED, user=actor.username, name=key, target={"user": name})
        self.access.changed()
