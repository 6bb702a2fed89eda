"""Whether a certificate may still be used: the check every hop runs (API, proxy, agent).

A user (or bot) certificate is refused when, at the moment of the check:

1. a lock in force targets its user, or one of the roles it carries;
2. its user no longer exists;
3. it was issued before its user was created (an earlier user of the same name);
4. it carries a role the user no longer has (a role taken from the user), unless an
   access request it names (``Identity.active_requests``) grants that role;
5. it names an access request that is no longer approved (denied, deleted, another user's).

``AccessState`` is the snapshot the check reads: the locks, per user the current roles
and creation time, and the approved access requests (``RequestGrant``). Auth builds it from storage; agents fetch it over the API and are told
when it changes. ``version`` identifies the snapshot's content, so a copy can be compared
cheaply. Admin and host identities are not users and are never refused here. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from common.identity import Identity
from pteleport.rbac.locks import Lock, lock_to_dict, parse_lock


@dataclass(frozen=True)
class Refusal:
    """Why a certificate may not be used: ``kind`` is ``lock``, ``gone`` (no such user) or
    ``stale`` (a new login fixes it: roles taken away, an earlier user of the same name)."""

    message: str
    kind: Literal["lock", "gone", "stale"]


@dataclass(frozen=True)
class UserAccess:
    roles: frozenset[str]
    created: datetime | None = None


@dataclass(frozen=True)
class RequestGrant:
    """An approved access request: whose it is and the roles it adds."""

    user: str
    roles: frozenset[str]


@dataclass(frozen=True)
class AccessState:
    locks: tuple[Lock, ...] = ()
    users: Mapping[str, UserAccess] = field(default_factory=dict)
    roles_version: str = ""
    version: str = ""
    requests: Mapping[str, RequestGrant] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        locks: list[Lock],
        users: Mapping[str, UserAccess],
        roles_version: str,
        requests: Mapping[str, RequestGrant] | None = None,
    ) -> AccessState:
        grants = dict(requests or {})
        draft = cls(tuple(sorted(locks, key=lambda lk: lk.name)), dict(users), roles_version, "", grants)
        digest = hashlib.sha256(json.dumps(draft.to_dict(), sort_keys=True).encode()).hexdigest()[:32]
        return cls(draft.locks, draft.users, roles_version, digest, grants)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "roles_version": self.roles_version,
            "locks": [lock_to_dict(lk) for lk in self.locks],
            "users": {
                name: {"roles": sorted(u.roles), "created": u.created.isoformat() if u.created else None}
                for name, u in sorted(self.users.items())
            },
            "requests": {
                rid: {"user": g.user, "roles": sorted(g.roles)} for rid, g in sorted(self.requests.items())
            },
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> AccessState:
        users = {
            name: UserAccess(
                frozenset(u.get("roles") or []),
                datetime.fromisoformat(u["created"]) if u.get("created") else None,
            )
            for name, u in (doc.get("users") or {}).items()
        }
        locks = tuple(parse_lock(d) for d in doc.get("locks") or [])
        grants = {
            rid: RequestGrant(str(g.get("user", "")), frozenset(g.get("roles") or []))
            for rid, g in (doc.get("requests") or {}).items()
        }
        return cls(locks, users, str(doc.get("roles_version", "")), str(doc.get("version", "")), grants)


def refusal(state: AccessState, identity: Identity, now: datetime) -> Refusal | None:
    """Why ``identity``'s certificate may not be used now, or None."""
    return lock_refusal(state, identity, now) or user_refusal(
        state.users.get(identity.username), identity, state.requests
    )


def lock_refusal(state: AccessState, identity: Identity, now: datetime) -> Refusal | None:
    """Rule 1 alone: a lock in force on the user or on one of the certificate's roles."""
    if identity.is_admin or identity.is_host:
        return None
    for lock in state.locks:
        if lock.in_force(now) and lock.applies_to(identity):
            return Refusal(lock.refusal(), "lock")
    return None


def user_refusal(
    user: UserAccess | None, identity: Identity, requests: Mapping[str, RequestGrant] | None = None
) -> Refusal | None:
    """Rules 2 to 5: the certificate against the current record of its user (None: no such user)
    and the approved access requests."""
    if identity.is_admin or identity.is_host:
        return None
    if user is None:
        return Refusal(f'user "{identity.username}" no longer exists in this cluster', "gone")
    # Certificate times have whole seconds: compare at that precision.
    if user.created is not None and identity.issued is not None and identity.issued < user.created.replace(microsecond=0):
        return Refusal(
            f'this certificate was issued to an earlier user named "{identity.username}"; '
            'log in again ("ptsh login")',
            "stale",
        )
    granted: set[str] = set()
    for rid in identity.active_requests:
        grant = (requests or {}).get(rid)
        if grant is None or grant.user != identity.username:
            return Refusal(
                f"access request {rid} is no longer approved (it was denied, deleted or has expired); "
                'log in again ("ptsh login") for a certificate without it',
                "stale",
            )
        granted |= grant.roles
    taken = sorted(set(identity.roles) - user.roles - granted)
    if taken:
        return Refusal(
            f'role "{taken[0]}" was taken from user "{identity.username}"; log in again ("ptsh login") '
            "for a certificate with your current roles",
            "stale",
        )
    return None
