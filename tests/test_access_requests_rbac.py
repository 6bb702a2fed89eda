"""The pure rules of access requests: role fields, who may request and review, what reviews decide."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from common.errors import AccessDenied, AlreadyExists, BadParameter
from common.identity import Identity
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
from pteleport.rbac.presets import preset_roles
from pteleport.rbac.revocation import AccessState, RequestGrant, UserAccess, refusal
from pteleport.rbac.role import parse_role

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def role(name: str, allow: dict | None = None, deny: dict | None = None):
    return parse_role({"kind": "role", "version": "v7", "metadata": {"name": name},
                       "spec": {"allow": allow or {}, "deny": deny or {}}})


def presets(*names: str):
    return [r for r in preset_roles() if r.name in names]


def request(roles=("db",), reviews=(), thresholds=None, mapping=None, **spec) -> AccessRequest:
    fields = {"user": "alice", "roles": list(roles), "created": NOW, "expires": NOW + timedelta(hours=1),
              "access_expiry": NOW + timedelta(hours=8), "reviews": list(reviews), **spec}
    if thresholds is not None:
        fields["thresholds"] = thresholds
        fields["role_thresholds"] = mapping
    else:
        fields["role_thresholds"] = {r: [0] for r in roles}
    return AccessRequest(metadata=RequestMetadata(name="r1"), spec=RequestSpec(**fields))


def review(author: str, approve: bool = True) -> Review:
    return Review(author=author, proposed_state=APPROVED if approve else DENIED, created=NOW)


# --- role fields ------------------------------------------------------------------------
def test_request_and_review_fields_are_typed_and_checked() -> None:
    r = role("req", allow={"request": {"roles": ["db-*", "^ops-[a-z]+$"], "thresholds": [{"approve": 2, "deny": 1}]},
                           "review_requests": {"roles": ["db"]}},
             deny={"request": {"roles": ["db-prod"]}})
    assert r.spec.allow.request.roles == ["db-*", "^ops-[a-z]+$"]
    assert r.spec.allow.request.thresholds[0].approve == 2
    assert r.spec.deny.request.roles == ["db-prod"]
    with pytest.raises(BadParameter, match=r"spec.allow.request.thresholds\[0\].approve: expected a whole number of at least 1"):
        role("bad", allow={"request": {"roles": ["db"], "thresholds": [{"approve": 0}]}})
    with pytest.raises(BadParameter, match=r"unknown field spec.allow.request.rolez \(did you mean roles\?\)"):
        role("bad", allow={"request": {"rolez": ["db"]}})
    with pytest.raises(BadParameter, match=r"spec.allow.review_requests.roles\[0\]: .*not a valid regular expression"):
        role("bad", allow={"review_requests": {"roles": ["^db-($"]}})


def test_presets_requester_and_reviewer() -> None:
    requester, = presets("requester")
    reviewer, = presets("reviewer")
    assert requester.spec.allow.request.roles == ["db", "db-*"]
    assert reviewer.spec.allow.review_requests.roles == ["db", "db-*"]
    request_rules.check_can_request([requester], {}, ["db", "db-admin"])
    with pytest.raises(AccessDenied, match='you may not request role "editor"; your roles let you request: db, db-\\*'):
        request_rules.check_can_request([requester], {}, ["editor"])


# --- requesting -------------------------------------------------------------------------
def test_deny_by_default_and_deny_wins() -> None:
    with pytest.raises(AccessDenied, match='your roles let you request no roles; ask an admin for a role such as "requester"'):
        request_rules.check_can_request(presets("access"), {}, ["db"])
    roles = [role("a", allow={"request": {"roles": ["*"]}}), role("b", deny={"request": {"roles": ["editor"]}})]
    request_rules.check_can_request(roles, {}, ["db"])
    with pytest.raises(AccessDenied, match='your role "b" denies requesting it'):
        request_rules.check_can_request(roles, {}, ["db", "editor"])


def test_request_roles_take_regexes_and_templates() -> None:
    roles = [role("a", allow={"request": {"roles": ["^team-(red|blue)$", "{{external.request_roles}}"]}})]
    request_rules.check_can_request(roles, {"request_roles": ["dba"]}, ["team-red", "dba"])
    with pytest.raises(AccessDenied):
        request_rules.check_can_request(roles, {}, ["team-green"])
    with pytest.raises(AccessDenied):
        request_rules.check_can_request(roles, {}, ["dba"])  # no trait: the template gives nothing


# --- thresholds -------------------------------------------------------------------------
def test_default_threshold_is_one_approval() -> None:
    thresholds, mapping = request_rules.thresholds_for(presets("requester"), {}, ["db"])
    assert [(t.approve, t.deny) for t in thresholds] == [(1, 1)] and mapping == {"db": [0]}
    assert request_rules.decide(request(thresholds=thresholds, mapping=mapping)) == PENDING
    assert request_rules.decide(request(reviews=[review("bob")], thresholds=thresholds, mapping=mapping)) == APPROVED
    assert request_rules.decide(request(reviews=[review("bob", False)], thresholds=thresholds, mapping=mapping)) == DENIED


def test_two_approvals_needed_and_one_denial_decides() -> None:
    roles = [role("req", allow={"request": {"roles": ["db"], "thresholds": [{"approve": 2, "deny": 1}]}})]
    thresholds, mapping = request_rules.thresholds_for(roles, {}, ["db"])
    one = request(reviews=[review("bob")], thresholds=thresholds, mapping=mapping)
    assert request_rules.decide(one) == PENDING
    two = request(reviews=[review("bob"), review("carol")], thresholds=thresholds, mapping=mapping)
    assert request_rules.decide(two) == APPROVED
    mixed = request(reviews=[review("bob"), review("carol", False)], thresholds=thresholds, mapping=mapping)
    assert request_rules.decide(mixed) == DENIED


def test_every_requested_role_needs_one_of_its_thresholds() -> None:
    roles = [
        role("easy", allow={"request": {"roles": ["db"]}}),
        role("strict", allow={"request": {"roles": ["db-admin"], "thresholds": [{"name": "two", "approve": 2}]}}),
    ]
    thresholds, mapping = request_rules.thresholds_for(roles, {}, ["db", "db-admin"])
    assert mapping == {"db": [0], "db-admin": [1]}
    one = request(roles=("db", "db-admin"), reviews=[review("bob")], thresholds=thresholds, mapping=mapping)
    assert request_rules.decide(one) == PENDING
    two = request(roles=("db", "db-admin"), reviews=[review("bob"), review("carol")], thresholds=thresholds,
                  mapping=mapping)
    assert request_rules.decide(two) == APPROVED


def test_a_threshold_with_a_filter_is_never_reached() -> None:
    roles = [role("req", allow={"request": {"roles": ["db"], "thresholds": [{"approve": 1, "filter": "true"}]}})]
    thresholds, mapping = request_rules.thresholds_for(roles, {}, ["db"])
    many = request(reviews=[review("bob"), review("carol")], thresholds=thresholds, mapping=mapping)
    assert request_rules.decide(many) == PENDING


# --- reviewing --------------------------------------------------------------------------
def test_review_permissions() -> None:
    reviewer = presets("reviewer")
    req = request(roles=("db",))
    request_rules.check_review("bob", reviewer, {}, req, expired=False)
    with pytest.raises(AccessDenied, match="you cannot review your own access request"):
        request_rules.check_review("alice", reviewer, {}, req, expired=False)
    with pytest.raises(AccessDenied, match='your roles do not let you review requests for role "db"'):
        request_rules.check_review("bob", presets("access"), {}, req, expired=False)
    with pytest.raises(AccessDenied, match='role "editor"'):
        request_rules.check_review("bob", reviewer, {}, request(roles=("db", "editor")), expired=False)
    with pytest.raises(AlreadyExists, match="already reviewed"):
        request_rules.check_review("bob", reviewer, {}, request(reviews=[review("bob")]), expired=False)
    with pytest.raises(BadParameter, match="has expired"):
        request_rules.check_review("bob", reviewer, {}, req, expired=True)
    with pytest.raises(BadParameter, match="already APPROVED"):
        request_rules.check_review("bob", reviewer, {}, request(state=APPROVED), expired=False)
    denies = [*reviewer, role("no", deny={"review_requests": {"roles": ["db"]}})]
    with pytest.raises(AccessDenied):
        request_rules.check_review("bob", denies, {}, req, expired=False)
    where = [role("w", allow={"review_requests": {"roles": ["db"], "where": "true"}})]
    with pytest.raises(AccessDenied):  # "where" is not evaluated: it grants nothing
        request_rules.check_review("bob", where, {}, req, expired=False)


# --- the model and expiry ----------------------------------------------------------------
def test_model_round_trip_and_expiry() -> None:
    req = request()
    assert parse_access_request(access_request_to_dict(req)) == req
    assert not req.is_expired(NOW) and req.is_expired(NOW + timedelta(hours=1))
    approved = req.with_spec(state=APPROVED)
    assert not approved.is_expired(NOW + timedelta(hours=2)) and approved.is_expired(NOW + timedelta(hours=8))
    with pytest.raises(BadParameter, match=r'access request "r1": spec\.state'):
        parse_access_request({**access_request_to_dict(req), "spec": {**access_request_to_dict(req)["spec"],
                                                                       "state": "MAYBE"}})


# --- certificates that carry a request ---------------------------------------------------
def test_revocation_counts_roles_of_approved_requests_only() -> None:
    users = {"alice": UserAccess(frozenset({"access"}))}
    cert = Identity("alice", roles=("access", "db"), active_requests=("r1",))
    granted = AccessState.build([], users, "", {"r1": RequestGrant("alice", frozenset({"db"}))})
    assert refusal(granted, cert, NOW) is None
    gone = AccessState.build([], users, "", {})
    found = refusal(gone, cert, NOW)
    assert found is not None and found.kind == "stale" and "access request r1 is no longer approved" in found.message
    other = AccessState.build([], users, "", {"r1": RequestGrant("bob", frozenset({"db"}))})
    assert refusal(other, cert, NOW) is not None
    # Without naming the request, the extra role is a role the user does not have.
    plain = Identity("alice", roles=("access", "db"))
    assert "was taken" in refusal(granted, plain, NOW).message
    # The snapshot travels to the agents as a dict.
    assert AccessState.from_dict(granted.to_dict()).requests == granted.requests
