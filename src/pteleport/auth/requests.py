"""Access requests: create, list, review, approve/deny (admin), delete, and certificates that assume them.

Every step is audited with Teleport's codes: ``access_request.create`` T5000I,
``access_request.update`` T5001I (a state set by an admin, or decided by reviews),
``access_request.review`` T5002I, ``access_request.delete`` T5003I and
``access_request.expire`` T5005I (written once, when auth first notices the expiry).
Refusals are audited too (``success: false``). Changes go through compare-and-swap, so two
reviewers at once neither lose a review nor decide twice. Approved requests feed the access
snapshot: a certificate that names a request that is later denied or deleted stops working
at every hop (``rbac/revocation.py``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from common.errors import AccessDenied, BadParameter, CompareFailed, NotFound, PteleportError
from common.identity import KIND_USER, Identity
from pteleport.auth.certs import CertService
from pteleport.auth.context import AuthContext
from pteleport.rbac import request_rules
from pteleport.rbac.access_request import (
    APPROVED,
    DENIED,
    PENDING,
    AccessRequest,
    RequestMetadata,
    RequestSpec,
    Review,
    access_request_to_dict,
    parse_access_request,
)

REQUEST_CREATE = ("access_request.create", "T5000I")
REQUEST_UPDATE = ("access_request.update", "T5001I")
REQUEST_REVIEW = ("access_request.review", "T5002I")
REQUEST_DELETE = ("access_request.delete", "T5003I")
REQUEST_EXPIRE = ("access_request.expire", "T5005I")

PENDING_TTL = timedelta(hours=1)  # Teleport's default for a pending request
MAX_TTL = timedelta(days=7)
# Stored documents outlive their use a little, so "expired" can be said instead of "not found".
KEEP_AFTER = timedelta(hours=24)
_MAX_SWAPS = 50
MAX_REASON = 4096


def _not_found(rid: str) -> NotFound:
    return NotFound(f'access request {rid} does not exist; "ptsh request ls" lists yours')


class AccessRequestService:
    def __init__(self, ctx: AuthContext, certs: CertService) -> None:
        self.ctx = ctx
        self.certs = certs
        self.store = ctx.access_requests
        # Called with the request after every change (the API wakes its waiting readers).
        self.on_change: list[Callable[[AccessRequest], None]] = []

    # --- reading ---------------------------------------------------------------------------
    def _load(self, rid: str) -> tuple[AccessRequest, Any]:
        try:
            item = self.store.get_item(rid)
        except NotFound:
            raise _not_found(rid) from None
        return parse_access_request(json.loads(item.value)), item

    def _fresh(self, rid: str) -> AccessRequest:
        """The request, with its expiry audited once if it has just been noticed."""
        req, item = self._load(rid)
        now = self.ctx.clock()
        if req.is_expired(now) and req.spec.expired is None:
            marked = req.with_spec(expired=now)
            try:
                self._swap(item, marked)
            except CompareFailed:
                return self._load(rid)[0]
            self.ctx.emit(*REQUEST_EXPIRE, user=req.spec.user, id=req.name, roles=list(req.spec.roles), state=req.state)
            return marked
        return req

    def _may_see(self, actor: Identity, req: AccessRequest) -> bool:
        if actor.is_admin or (actor.kind == KIND_USER and actor.username == req.spec.user):
            return True
        if actor.is_host:
            return False
        checker = self.ctx.checker(actor)
        if checker.rule_allows("access_request", "read"):
            return True
        return request_rules.may_review(checker.roles, actor.traits, req.spec.roles) is None

    def get(self, actor: Identity, rid: str) -> dict[str, Any]:
        req = self._fresh(rid)
        if not self._may_see(actor, req):
            raise _not_found(rid)
        return access_request_to_dict(req)

    def state_of(self, actor: Identity, rid: str) -> dict[str, Any]:
        """``get`` for a waiting client (the same answer; named for the long poll)."""
        return self.get(actor, rid)

    def list(self, actor: Identity) -> list[dict[str, Any]]:
        if actor.is_host:
            raise AccessDenied("host identities do not read access requests")
        out = []
        for key, _doc, _item in list(self.store.items()):
            try:
                req = self._fresh(key)
            except (NotFound, BadParameter):
                continue
            if self._may_see(actor, req):
                out.append(req)
        out.sort(key=lambda r: (r.spec.created, r.name), reverse=True)
        return [access_request_to_dict(r) for r in out]

    # --- creating --------------------------------------------------------------------------
    def create(
        self,
        actor: Identity,
        roles: list[str],
        reason: str,
        reviewers: list[str],
        request_ttl: timedelta | None,
        session_ttl: timedelta | None,
    ) -> dict[str, Any]:
        if actor.kind != KIND_USER:
            raise AccessDenied("only users create access requests; log in with \"ptsh login\"")
        roles = sorted({r.strip() for r in roles if r.strip()})
        if not roles:
            raise BadParameter("name at least one role to request, e.g. --roles=db")
        if len(reason) > MAX_REASON:
            raise BadParameter(f"--reason may be at most {MAX_REASON} characters")
        user = self._user(actor.username)
        own = list(user["spec"].get("roles") or [])
        traits = user["spec"].get("traits") or {}
        checker = self.ctx.checker_for(own, traits)
        try:
            for role in roles:
                if role in own:
                    raise BadParameter(f'you already have role "{role}"; request only roles you do not have')
                self.ctx.role(role)  # NotFound with a sentence for a role that does not exist
            request_rules.check_can_request(checker.roles, traits, roles)
        except PteleportError as exc:
            self.ctx.emit(*REQUEST_CREATE, user=actor.username, roles=roles, success=False, error=exc.message)
            raise
        now = self.ctx.clock()
        for ttl, flag in ((request_ttl, "--request-ttl"), (session_ttl, "--session-ttl")):
            if ttl is not None and ttl <= timedelta(0):
                raise BadParameter(f"{flag} must be positive, e.g. {flag}=1h")
        # The session can last no longer than the requester's login, nor the requested roles allow.
        longest = self.ctx.checker_for([*own, *roles], traits).max_session_ttl()
        login_left = actor.expires - now if actor.expires else longest
        cap = min(longest, login_left)
        if session_ttl is not None and session_ttl > cap:
            raise BadParameter(
                f"--session-ttl may be at most {_short(cap)} (what your login and the requested roles allow)"
            )
        access_ttl = session_ttl or cap
        pending = request_ttl or min(PENDING_TTL, access_ttl)
        if pending > access_ttl or pending > MAX_TTL:
            raise BadParameter(f"--request-ttl may be at most {_short(min(access_ttl, MAX_TTL))} (the session TTL)")
        thresholds, mapping = request_rules.thresholds_for(checker.roles, traits, roles)
        req = AccessRequest(
            metadata=RequestMetadata(name=str(uuid.uuid4())),
            spec=RequestSpec(
                user=actor.username,
                roles=roles,
                state=PENDING,
                created=now,
                expires=now + pending,
                access_expiry=now + access_ttl,
                request_reason=reason.strip(),
                suggested_reviewers=sorted({r.strip() for r in reviewers if r.strip()}),
                thresholds=thresholds,
                role_thresholds=mapping,
            ),
        )
        self.store.create(req.name, access_request_to_dict(req), expires=self._keep_until(req))
        self.ctx.emit(
            *REQUEST_CREATE,
            user=actor.username,
            id=req.name,
            roles=roles,
            reason=req.spec.request_reason or None,
            reviewers=req.spec.suggested_reviewers or None,
            state=PENDING,
            success=True,
        )
        self._changed(req)
        return access_request_to_dict(req)

    # --- deciding --------------------------------------------------------------------------
    def review(self, actor: Identity, rid: str, approve: bool, reason: str) -> dict[str, Any]:
        """A reviewer's approval or denial; the thresholds decide the state."""
        if actor.kind != KIND_USER:
            raise AccessDenied('reviews come from users; an admin uses "pctl requests approve|deny"')
        if len(reason) > MAX_REASON:
            raise BadParameter(f"--reason may be at most {MAX_REASON} characters")
        for _ in range(_MAX_SWAPS):
            req, item = self._load(rid)
            if not self._may_see(actor, req):
                self._emit_review(actor, req, approve, reason, success=False, error="no such request for this user")
                raise _not_found(rid)
            now = self.ctx.clock()
            if req.is_expired(now):
                self._fresh(rid)  # audits the expiry once
            checker = self.ctx.checker(actor)
            try:
                request_rules.check_review(
                    actor.username, checker.roles, actor.traits, req, expired=req.is_expired(now)
                )
            except PteleportError as exc:
                self._emit_review(actor, req, approve, reason, success=False, error=exc.message)
                raise
            review = Review(
                author=actor.username,
                roles=sorted(actor.roles),
                proposed_state=APPROVED if approve else DENIED,
                reason=reason.strip(),
                created=now,
            )
            new = req.with_spec(reviews=[*req.spec.reviews, review])
            state = request_rules.decide(new)
            if state != PENDING:
                new = new.with_spec(state=state, resolve_reason=review.reason, resolved_by=actor.username)
            try:
                self._swap(item, new)
            except CompareFailed:
                continue  # another review landed first: read again
            self._emit_review(actor, new, approve, reason, success=True)
            if state != PENDING:
                self._emit_update(actor, new)
            self._changed(new)
            return access_request_to_dict(new)
        raise CompareFailed("too many reviews of this request at once; try again")

    def set_state(self, actor: Identity, rid: str, approve: bool, reason: str) -> dict[str, Any]:
        """`pctl requests approve|deny`: an admin decides, whatever the thresholds say."""
        verb = "approve" if approve else "deny"
        for _ in range(_MAX_SWAPS):
            req, item = self._load(rid)
            try:
                self.ctx.authorize(actor, "access_request", "update")
                if not actor.is_admin and actor.username == req.spec.user:
                    raise AccessDenied(f"you cannot {verb} your own access request; another admin has to")
                if req.is_expired(self.ctx.clock()):
                    self._fresh(rid)  # audits the expiry once
                    raise BadParameter(f"access request {rid} has expired; it can no longer be {verb}d")
                target = APPROVED if approve else DENIED
                if req.state == target:
                    raise BadParameter(f"access request {rid} is already {target}")
                if req.state == DENIED:
                    raise BadParameter(f"access request {rid} was denied; a denied request stays denied")
            except PteleportError as exc:
                self.ctx.emit(
                    *REQUEST_UPDATE, user=actor.username, id=rid, state=req.state, success=False, error=exc.message
                )
                raise
            new = req.with_spec(state=target, resolve_reason=reason.strip(), resolved_by=actor.username)
            try:
                self._swap(item, new)
            except CompareFailed:
                continue
            self._emit_update(actor, new)
            self._changed(new)
            return access_request_to_dict(new)
        raise CompareFailed("too many changes to this request at once; try again")

    def delete(self, actor: Identity, rid: str) -> None:
        req, _item = self._load(rid)
        if not (actor.kind == KIND_USER and actor.username == req.spec.user):
            try:
                if not self._may_see(actor, req):
                    raise _not_found(rid)
                self.ctx.authorize(actor, "access_request", "delete")
            except PteleportError as exc:
                self.ctx.emit(*REQUEST_DELETE, user=actor.username, id=rid, success=False, error=exc.message)
                raise
        try:
            self.store.delete(rid)
        except NotFound:
            raise _not_found(rid) from None
        self.ctx.emit(
            *REQUEST_DELETE, user=actor.username, id=rid, roles=list(req.spec.roles), state=req.state, success=True
        )
        self._changed(req)

    # --- assuming --------------------------------------------------------------------------
    def assume(self, actor: Identity, public_key_pem: str, add: list[str], drop: list[str]) -> tuple[bytes, Identity]:
        """A new certificate for the caller with the roles of its approved requests (``add``
        joins those it has, ``drop`` leaves some out; ``*`` drops all)."""
        if actor.kind != KIND_USER:
            raise AccessDenied("only users assume access requests")
        now = self.ctx.clock()
        keep = [] if "*" in drop else [r for r in actor.active_requests if r not in drop]
        wanted = list(dict.fromkeys([*keep, *add]))
        user = self._user(actor.username)
        roles = list(user["spec"].get("roles") or [])
        traits = user["spec"].get("traits") or {}
        ends = [actor.expires] if actor.expires else []
        for rid in wanted:
            req = self._fresh(rid)
            if req.spec.user != actor.username:
                raise _not_found(rid)
            if req.state == PENDING and not req.is_expired(now):
                raise BadParameter(f'access request {rid} is still pending; wait for a review ("ptsh request show {rid}")')
            if req.state == DENIED:
                raise AccessDenied(f"access request {rid} was denied{_why(req)}; it cannot be assumed")
            if req.is_expired(now):
                raise AccessDenied(
                    f'access request {rid} expired at {req.spec.access_expiry:%Y-%m-%d %H:%M:%S} UTC; '
                    'create a new one with "ptsh request create"'
                )
            roles += [r for r in req.spec.roles if r not in roles]
            ends.append(req.spec.access_expiry)
        end = min(ends) if ends else now + self.certs.capped_ttl(actor, None)
        ttl = end - now
        if ttl <= timedelta(0):
            raise AccessDenied('your login has expired; run "ptsh login"')
        identity = replace(
            actor, roles=tuple(roles), traits=traits, route=None, active_requests=tuple(wanted), expires=None, issued=None
        )
        ttl = min(ttl, self.certs.capped_ttl(identity, ttl))
        cert = self.certs.sign_user(identity, public_key_pem, ttl)
        return cert, replace(identity, expires=now + ttl)

    # --- helpers ---------------------------------------------------------------------------
    def _user(self, name: str) -> dict[str, Any]:
        try:
            return self.ctx.users.get(name)
        except NotFound:
            raise AccessDenied(f'user "{name}" no longer exists in this cluster') from None

    def _keep_until(self, req: AccessRequest) -> datetime:
        return max(req.spec.expires, req.spec.access_expiry) + KEEP_AFTER

    def _swap(self, item: Any, req: AccessRequest) -> None:
        self.store.swap(item, access_request_to_dict(req), expires=self._keep_until(req))

    def _changed(self, req: AccessRequest) -> None:
        for hook in list(self.on_change):
            hook(req)

    def _emit_review(self, actor: Identity, req: AccessRequest, approve: bool, reason: str, **status: Any) -> None:
        self.ctx.emit(
            *REQUEST_REVIEW,
            user=actor.username,
            id=req.name,
            reviewer=actor.username,
            proposed_state=APPROVED if approve else DENIED,
            reason=reason.strip() or None,
            state=req.state,
            **status,
        )

    def _emit_update(self, actor: Identity, req: AccessRequest) -> None:
        self.ctx.emit(
            *REQUEST_UPDATE,
            user=actor.username,
            id=req.name,
            roles=list(req.spec.roles),
            state=req.state,
            reason=req.spec.resolve_reason or None,
            success=True,
        )


def _why(req: AccessRequest) -> str:
    return f' (reason: "{req.spec.resolve_reason}")' if req.spec.resolve_reason else ""


def _short(ttl: timedelta) -> str:
    from common.durations import format_duration

    return format_duration(ttl)
