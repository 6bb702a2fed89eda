"""Who may request which roles, who may review a request, and what the reviews decide.

Requesting (``allow.request.roles`` / ``deny.request.roles`` of the requester's roles):
entries are role names, globs (``db-*``), ``^regex$`` or trait templates. A role may be
requested when some role allows it and none denies it (deny wins, deny by default).

Thresholds: each requested role is decided by the ``allow.request.thresholds`` of every
role that lets the user request it (a role without thresholds counts as one threshold of
one approval and one denial). A role is approved when ONE of its thresholds has enough
approvals; the request is APPROVED when every requested role is, and DENIED as soon as any
of its thresholds has enough denials. A threshold with a ``filter`` is never reached (the
filter is not evaluated: fail closed).

Reviewing (``allow.review_requests.roles`` / ``deny...``): a reviewer may review a
request when every requested role is allowed by some review rule and denied by none; a
rule with ``where`` allows nothing (not evaluated: fail closed). Nobody reviews their own
request, nor the same request twice. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from common.errors import AccessDenied, AlreadyExists, BadParameter
from pteleport.rbac import matchers, templates
from pteleport.rbac.access_request import APPROVED, DENIED, PENDING, AccessRequest, RequestThreshold
from pteleport.rbac.role import Role

Traits = Mapping[str, Sequence[str]]


def _entries(values: Sequence[str] | None, traits: Traits) -> list[str]:
    return templates.expand_all(values or [], traits)


def _matches(entries: Sequence[str], role: str) -> bool:
    return any(matchers.match_label_value(entry, role) for entry in entries)


def _request_entries(role: Role, side: str, traits: Traits) -> list[str]:
    cond = getattr(role.spec, side).request
    return _entries(cond.roles if cond is not None else None, traits)


def requestable_patterns(roles: Sequence[Role], traits: Traits) -> list[str]:
    """What the roles let one request (for messages)."""
    out: list[str] = []
    for role in roles:
        for entry in _request_entries(role, "allow", traits):
            if entry not in out:
                out.append(entry)
    return out


def check_can_request(roles: Sequence[Role], traits: Traits, requested: Sequence[str]) -> None:
    """Raise AccessDenied naming the first requested role the user's roles do not let them request."""
    for name in requested:
        for role in roles:
            if _matches(_request_entries(role, "deny", traits), name):
                raise AccessDenied(
                    f'you may not request role "{name}": your role "{role.name}" denies requesting it',
                    detail=f"deny.request.roles of {role.name}",
                )
        if not any(_matches(_request_entries(role, "allow", traits), name) for role in roles):
            allowed = requestable_patterns(roles, traits)
            hint = (
                f"your roles let you request: {', '.join(allowed)}"
                if allowed
                else 'your roles let you request no roles; ask an admin for a role such as "requester"'
            )
            raise AccessDenied(f'you may not request role "{name}"; {hint}')


def thresholds_for(
    roles: Sequence[Role], traits: Traits, requested: Sequence[str]
) -> tuple[list[RequestThreshold], dict[str, list[int]]]:
    """The thresholds that decide the request, and which of them decide each requested role."""
    thresholds: list[RequestThreshold] = []
    mapping: dict[str, list[int]] = {}
    for name in requested:
        indexes: list[int] = []
        for role in roles:
            if not _matches(_request_entries(role, "allow", traits), name):
                continue
            cond = role.spec.allow.request
            declared = (cond.thresholds if cond is not None else None) or []
            found = [
                RequestThreshold(name=t.name or "default", approve=t.approve, deny=t.deny, filter=t.filter)
                for t in declared
            ] or [RequestThreshold()]
            for threshold in found:
                if threshold not in thresholds:
                    thresholds.append(threshold)
                index = thresholds.index(threshold)
                if index not in indexes:
                    indexes.append(index)
        mapping[name] = indexes
    return thresholds, mapping


def decide(req: AccessRequest) -> str:
    """The state the request's reviews lead to (PENDING until a threshold is reached)."""
    spec = req.spec
    approvals = sum(1 for r in spec.reviews if r.proposed_state == APPROVED)
    denials = sum(1 for r in spec.reviews if r.proposed_state == DENIED)
    live = [t for t in spec.thresholds if t.filter is None]
    if any(denials >= t.deny for t in live):
        return DENIED
    for role in spec.roles:
        indexes = spec.role_thresholds.get(role, [])
        decisive = [spec.thresholds[i] for i in indexes if 0 <= i < len(spec.thresholds)]
        if not any(t.filter is None and approvals >= t.approve for t in decisive):
            return PENDING
    return APPROVED


def _review_entries(role: Role, side: str, traits: Traits) -> list[str] | None:
    cond = getattr(role.spec, side).review_requests
    if cond is None:
        return []
    if side == "allow" and cond.where:
        return None  # not evaluated: grants nothing
    return _entries(cond.roles, traits)


def reviews_any(roles: Sequence[Role], traits: Traits) -> bool:
    """Whether some role lets one review requests for some role (who sees a requests page)."""
    return any(_review_entries(role, "allow", traits) for role in roles)


def may_review(roles: Sequence[Role], traits: Traits, requested: Sequence[str]) -> str | None:
    """None when the roles let one review a request for ``requested``; else the role that is not reviewable."""
    for name in requested:
        if any(_matches(_review_entries(role, "deny", traits) or [], name) for role in roles):
            return name
        if not any(_matches(_review_entries(role, "allow", traits) or [], name) for role in roles):
            return name
    return None


def check_review(
    reviewer: str, roles: Sequence[Role], traits: Traits, req: AccessRequest, *, expired: bool
) -> None:
    """Raise the error that refuses ``reviewer``'s review of ``req``, if any."""
    if reviewer == req.spec.user:
        raise AccessDenied("you cannot review your own access request; another reviewer has to")
    if expired:
        raise BadParameter(
            f'access request {req.name} has expired; "{req.spec.user}" can create a new one with "ptsh request create"'
        )
    if req.spec.state != PENDING:
        raise BadParameter(f"access request {req.name} is already {req.spec.state}; it can no longer be reviewed")
    if any(r.author == reviewer for r in req.spec.reviews):
        raise AlreadyExists(f"you have already reviewed access request {req.name}")
    blocked = may_review(roles, traits, req.spec.roles)
    if blocked is not None:
        raise AccessDenied(
            f'your roles do not let you review requests for role "{blocked}"; '
            'ask an admin for a role whose review_requests.roles include it (such as "reviewer")'
        )
