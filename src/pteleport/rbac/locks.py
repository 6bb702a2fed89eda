"""Teleport's ``lock`` resource: a user or a role that may not be used until the lock ends.

::

    kind: lock
    version: v2
    metadata:
      name: 5a1c...            # assigned by auth (UUID)
    spec:
      target:
        user: alice            # or role: db   (exactly one)
      message: "Suspicious activity"
      expires: "2026-12-01T12:00:00Z"   # absent: until removed
      created_at: ...
      created_by: admin

``parse_lock`` validates a document (pctl create, the API, the store) and names the field
that is wrong. A lock *in force* (not expired) refuses every certificate of its user, or
every certificate that carries its role, at the API, the proxy and the agents. Pure: no I/O.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from common.errors import BadParameter
from common.identity import Identity

# Labels auth puts on the locks it creates itself when a user is deleted.
DELETED_USER_LABEL = "teleport.internal/deleted-user"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LockTarget(_Strict):
    user: str | None = None
    role: str | None = None

    @model_validator(mode="after")
    def _one(self) -> LockTarget:
        if (self.user is None) == (self.role is None):
            raise ValueError("a lock targets exactly one of user or role")
        for value in (self.user, self.role):
            if value is not None and not value.strip():
                raise ValueError("the lock target must not be empty")
        return self

    def describe(self) -> str:
        return f'user "{self.user}"' if self.user is not None else f'role "{self.role}"'


class LockMetadata(_Strict):
    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    description: str | None = None
    revision: str | None = None


class LockSpec(_Strict):
    target: LockTarget
    message: str = ""
    expires: datetime | None = None
    created_at: datetime | None = None
    created_by: str = ""

    @model_validator(mode="after")
    def _aware(self) -> LockSpec:
        for when in (self.expires, self.created_at):
            if when is not None and when.tzinfo is None:
                raise ValueError("times must carry a time zone, e.g. 2026-12-01T12:00:00Z")
        return self


class Lock(_Strict):
    kind: Literal["lock"] = "lock"
    version: Literal["v2"] = "v2"
    metadata: LockMetadata
    spec: LockSpec

    @property
    def name(self) -> str:
        return self.metadata.name

    def in_force(self, now: datetime) -> bool:
        return self.spec.expires is None or self.spec.expires > now

    def applies_to(self, identity: Identity) -> bool:
        target = self.spec.target
        if target.user is not None:
            return identity.username == target.user
        return target.role in identity.roles

    def refusal(self) -> str:
        """The sentence a client refused by this lock reads."""
        text = f"access is locked for {self.spec.target.describe()}"
        if self.spec.message:
            return f"{text}: {self.spec.message}"
        return f'{text}; ask an admin ("pctl locks ls" lists locks)'


def parse_lock(doc: Any) -> Lock:
    """A lock from a document, or BadParameter naming the field."""
    name = (doc.get("metadata") or {}).get("name", "?") if isinstance(doc, dict) else "?"
    try:
        return Lock.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "lock"
        if first["type"] == "extra_forbidden":
            raise BadParameter(f'lock "{name}": unknown field {loc}') from None
        msg = str(first["msg"]).removeprefix("Value error, ")
        raise BadParameter(f'lock "{name}": {loc}: {msg}') from None


def lock_to_dict(lock: Lock) -> dict[str, Any]:
    doc = lock.model_dump(mode="json", exclude_none=True)
    if not doc["metadata"].get("labels"):
        doc["metadata"].pop("labels", None)
    return doc


def utc(when: datetime) -> datetime:
    return when.astimezone(UTC)
