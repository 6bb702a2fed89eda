"""Teleport's ``access_request`` resource: a user asks for extra roles, reviewers decide.

::

    kind: access_request
    version: v3
    metadata:
      name: 0b6f...                     # assigned by auth (UUID)
    spec:
      user: alice
      roles: [db-admin]
      state: PENDING                    # PENDING | APPROVED | DENIED
      created: "2026-12-01T12:00:00Z"
      expires: "2026-12-01T13:00:00Z"   # a pending request can be reviewed until then (request TTL)
      access_expiry: "2026-12-01T20:00:00Z"  # certificates with these roles end by then (session TTL)
      request_reason: "incident 42"
      resolve_reason: ""
      suggested_reviewers: [bob]
      thresholds: [{name: default, approve: 1, deny: 1}]
      role_thresholds: {db-admin: [0]}  # which thresholds decide each requested role
      reviews:
      - {author: bob, roles: [reviewer], proposed_state: APPROVED, reason: ok, created: ...}
      resolved_by: bob
      expired: null                     # when auth noticed (and audited) that it expired

A request is *expired* when it is pending past ``expires`` or approved past
``access_expiry``: it can then be neither reviewed nor assumed. ``parse_access_request``
validates a stored or received document and names the field that is wrong. Pure: no I/O.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from common.errors import BadParameter

PENDING = "PENDING"
APPROVED = "APPROVED"
DENIED = "DENIED"
State = Literal["PENDING", "APPROVED", "DENIED"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RequestThreshold(_Strict):
    name: str = "default"
    approve: int = Field(default=1, ge=1)
    deny: int = Field(default=1, ge=1)
    filter: str | None = None  # kept, never reached (fail closed)


class Review(_Strict):
    author: str
    roles: list[str] = Field(default_factory=list)
    proposed_state: Literal["APPROVED", "DENIED"]
    reason: str = ""
    created: datetime


class RequestMetadata(_Strict):
    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    revision: str | None = None


class RequestSpec(_Strict):
    user: str
    roles: list[str] = Field(min_length=1)
    state: State = PENDING
    created: datetime
    expires: datetime
    access_expiry: datetime
    request_reason: str = ""
    resolve_reason: str = ""
    suggested_reviewers: list[str] = Field(default_factory=list)
    thresholds: list[RequestThreshold] = Field(default_factory=lambda: [RequestThreshold()])
    role_thresholds: dict[str, list[int]] = Field(default_factory=dict)
    reviews: list[Review] = Field(default_factory=list)
    resolved_by: str = ""
    expired: datetime | None = None

    @model_validator(mode="after")
    def _aware(self) -> RequestSpec:
        for when in (self.created, self.expires, self.access_expiry):
            if when.tzinfo is None:
                raise ValueError("times must carry a time zone, e.g. 2026-12-01T12:00:00Z")
        return self


class AccessRequest(_Strict):
    kind: Literal["access_request"] = "access_request"
    version: Literal["v3"] = "v3"
    metadata: RequestMetadata
    spec: RequestSpec

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def state(self) -> str:
        return self.spec.state

    def is_expired(self, now: datetime) -> bool:
        """Pending past the request TTL, or approved past the session TTL."""
        if self.spec.state == PENDING:
            return now >= self.spec.expires
        if self.spec.state == APPROVED:
            return now >= self.spec.access_expiry
        return False

    def with_spec(self, **changes: Any) -> AccessRequest:
        return self.model_copy(update={"spec": self.spec.model_copy(update=changes)})


def parse_access_request(doc: Any) -> AccessRequest:
    """An access request from a document, or BadParameter naming the field."""
    name = (doc.get("metadata") or {}).get("name", "?") if isinstance(doc, dict) else "?"
    try:
        return AccessRequest.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "access_request"
        if first["type"] == "extra_forbidden":
            raise BadParameter(f'access request "{name}": unknown field {loc}') from None
        msg = str(first["msg"]).removeprefix("Value error, ")
        raise BadParameter(f'access request "{name}": {loc}: {msg}') from None


def access_request_to_dict(req: AccessRequest) -> dict[str, Any]:
    doc = req.model_dump(mode="json", exclude_none=True)
    if not doc["metadata"].get("labels"):
        doc["metadata"].pop("labels", None)
    return doc
