"""Access requests in the auth service (in memory): create, review, thresholds, assume, revoke, audit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from common.errors import AccessDenied, BadParameter, NotFound, NotLoggedIn
from common.identity import KIND_ADMIN, Identity, identity_from_pem
from common.tls import generate_private_key, public_key_pem
from pteleport.audit.memory_log import MemoryAuditLog
from pteleport.auth.context import AuthSettings
from pteleport.auth.server import AuthServer
from pteleport.storage.memory import MemoryBackend

ADMIN = Identity(username="admin", kind=KIND_ADMIN)
DB_ADMIN = """kind: role
version: v7
metadata: {name: db-admin}
spec:
  allow:
    db_labels: {'*': '*'}
    db_users: ['*']
    db_names: ['*']
"""


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def setup() -> tuple[AuthServer, Clock]:
    clock = Clock()
    auth = AuthServer(MemoryBackend(clock=clock), MemoryAuditLog(), clock, AuthSettings("t", "x:3080"))
    auth.init_cluster()
    auth.resources.create(ADMIN, [__import__("yaml").safe_load(DB_ADMIN)], False)
    auth.users.add(ADMIN, "alice", ["access", "requester"], {}, None)
    auth.users.add(ADMIN, "bob", ["access", "reviewer"], {}, None)
    auth.users.add(ADMIN, "carol", ["access", "reviewer"], {}, None)
    return auth, clock


def login(auth: AuthServer, user: str, hours: int = 12) -> Identity:
    doc = auth.ctx.users.get(user)
    key = public_key_pem(generate_private_key()).decode()
    pem = auth.certs.sign_user(Identity(user, roles=tuple(doc["spec"]["roles"])), key, timedelta(hours=hours))
    return identity_from_pem(pem)


def assume(auth: AuthServer, who: Identity, add: list[str], drop: list[str] | None = None) -> Identity:
    key = public_key_pem(generate_private_key()).decode()
    pem, _ = auth.requests.assume(who, key, add, drop or [])
    return identity_from_pem(pem)


def events(auth: AuthServer, name: str) -> list[dict]:
    return [e for e in auth.ctx.audit.search(limit=10_000) if e["event"] == name]


def create(auth: AuthServer, who: Identity, roles: list[str] | None = None, **kw) -> dict:
    return auth.requests.create(who, roles or ["db-admin"], kw.pop("reason", "incident 42"), kw.pop("reviewers", []),
                                kw.pop("request_ttl", None), kw.pop("session_ttl", None))


def test_request_review_assume_and_use(setup) -> None:
    auth, clock = setup
    alice, bob = login(auth, "alice"), login(auth, "bob")
    doc = create(auth, alice, reviewers=["bob"], session_ttl=timedelta(hours=2))
    rid = doc["metadata"]["name"]
    assert doc["spec"]["state"] == "PENDING" and doc["spec"]["suggested_reviewers"] == ["bob"]
    with pytest.raises(BadParameter, match="still pending"):
        assume(auth, alice, [rid])
    decided = auth.requests.review(bob, rid, True, "ok")
    assert decided["spec"]["state"] == "APPROVED" and decided["spec"]["resolved_by"] == "bob"
    elevated = assume(auth, alice, [rid])
    assert set(elevated.roles) == {"access", "requester", "db-admin"} and elevated.active_requests == (rid,)
    assert elevated.expires == clock.now.replace(microsecond=0) + timedelta(hours=2)  # capped by the session TTL
    auth.access.check(elevated)  # the extra role is granted by the request, not "taken"
    auth.ctx.checker(elevated).check_db_access("aurora", {"env": "dev"}, "postgres", "postgres")
    assert [e["code"] for e in events(auth, "access_request.create")] == ["T5000I"]
    assert [e["code"] for e in events(auth, "access_request.review")] == ["T5002I"]
    assert [e["state"] for e in events(auth, "access_request.update")] == ["APPROVED"]
    # Dropping it again gives a certificate with only the user's own roles.
    plain = assume(auth, elevated, [], ["*"])
    assert set(plain.roles) == {"access", "requester"} and plain.active_requests == ()


def test_self_approval_is_refused_even_for_a_reviewer(setup) -> None:
    auth, _ = setup
    auth.users.update(ADMIN, "alice", ["access", "requester", "reviewer", "editor"], {})
    alice = login(auth, "alice")
    rid = create(auth, alice)["metadata"]["name"]
    with pytest.raises(AccessDenied, match="you cannot review your own access request"):
        auth.requests.review(alice, rid, True, "")
    with pytest.raises(AccessDenied, match="you cannot approve your own access request"):
        auth.requests.set_state(alice, rid, True, "")
    refused = [e for e in events(auth, "access_request.review") if e["success"] is False]
    assert refused and "own access request" in refused[0]["error"]
    assert auth.requests.get(ADMIN, rid)["spec"]["state"] == "PENDING"


def test_deny_by_default_for_requests_and_reviews(setup) -> None:
    auth, _ = setup
    bob = login(auth, "bob")
    with pytest.raises(AccessDenied, match="your roles let you request no roles"):
        create(auth, bob)
    alice = login(auth, "alice")
    with pytest.raises(AccessDenied, match='you may not request role "editor"'):
        create(auth, alice, ["editor"])
    with pytest.raises(NotFound, match='role "nosuch" does not exist'):
        create(auth, alice, ["nosuch"])
    with pytest.raises(BadParameter, match='you already have role "access"'):
        create(auth, alice, ["access"])
    assert [e["success"] for e in events(auth, "access_request.create")] == [False] * 4
    rid = create(auth, alice)["metadata"]["name"]
    auth.users.add(ADMIN, "dave", ["access"], {}, None)
    dave = login(auth, "dave")
    with pytest.raises(NotFound):  # not a reviewer: cannot even see it
        auth.requests.review(dave, rid, True, "")
    assert [(e["user"], e["success"]) for e in events(auth, "access_request.review")] == [("dave", False)]
    assert auth.requests.list(dave) == []
    assert [r["metadata"]["name"] for r in auth.requests.list(bob)] == [rid]
    with pytest.raises(AccessDenied, match="not allowed to update access_request"):
        auth.requests.set_state(bob, rid, True, "")


def test_a_denial_decides_and_cannot_be_assumed(setup) -> None:
    auth, _ = setup
    alice, bob, carol = login(auth, "alice"), login(auth, "bob"), login(auth, "carol")
    rid = create(auth, alice)["metadata"]["name"]
    assert auth.requests.review(bob, rid, False, "not now")["spec"]["state"] == "DENIED"
    with pytest.raises(BadParameter, match="already DENIED"):
        auth.requests.review(carol, rid, True, "")
    with pytest.raises(AccessDenied, match='was denied \\(reason: "not now"\\)'):
        assume(auth, alice, [rid])


def test_thresholds_need_two_approvals(setup) -> None:
    auth, _ = setup
    import yaml

    auth.resources.create(ADMIN, [yaml.safe_load(
        "kind: role\nversion: v7\nmetadata: {name: strict}\nspec:\n  allow:\n    request:\n"
        "      roles: [db-admin]\n      thresholds: [{approve: 2, deny: 2}]\n")], False)
    auth.users.update(ADMIN, "alice", ["access", "strict"], {})
    alice, bob, carol = login(auth, "alice"), login(auth, "bob"), login(auth, "carol")
    rid = create(auth, alice)["metadata"]["name"]
    assert auth.requests.review(bob, rid, True, "")["spec"]["state"] == "PENDING"
    with pytest.raises(Exception, match="already reviewed"):
        auth.requests.review(bob, rid, True, "")
    assert auth.requests.review(carol, rid, True, "")["spec"]["state"] == "APPROVED"


def test_expired_requests_cannot_be_reviewed_or_assumed(setup) -> None:
    auth, clock = setup
    alice, bob = login(auth, "alice"), login(auth, "bob")
    pending = create(auth, alice, request_ttl=timedelta(minutes=5))["metadata"]["name"]
    approved = create(auth, alice, session_ttl=timedelta(hours=1))["metadata"]["name"]
    auth.requests.review(bob, approved, True, "")
    clock.now += timedelta(minutes=6)
    with pytest.raises(BadParameter, match="has expired"):
        auth.requests.review(bob, pending, True, "")
    clock.now += timedelta(hours=1)
    with pytest.raises(AccessDenied, match=r"expired at .* create a new one"):
        assume(auth, alice, [approved])
    auth.requests.list(ADMIN)
    auth.requests.list(ADMIN)  # noticed once, audited once each
    assert sorted(e["id"] for e in events(auth, "access_request.expire")) == sorted([pending, approved])
    assert all(e["code"] == "T5005I" for e in events(auth, "access_request.expire"))


def test_ttl_flags_are_checked(setup) -> None:
    auth, _ = setup
    alice = login(auth, "alice", hours=2)
    with pytest.raises(BadParameter, match="--session-ttl may be at most 2h"):
        create(auth, alice, session_ttl=timedelta(hours=3))
    with pytest.raises(BadParameter, match="--request-ttl may be at most 1h"):
        create(auth, alice, session_ttl=timedelta(hours=1), request_ttl=timedelta(hours=2))
    with pytest.raises(BadParameter, match="--request-ttl must be positive"):
        create(auth, alice, request_ttl=timedelta(0) - timedelta(seconds=1))


def test_deleting_or_a_lock_stops_a_certificate_that_carries_the_request(setup) -> None:
    auth, _ = setup
    alice, bob = login(auth, "alice"), login(auth, "bob")
    rid = create(auth, alice)["metadata"]["name"]
    auth.requests.review(bob, rid, True, "")
    elevated = assume(auth, alice, [rid])
    auth.locks.create(ADMIN, None, "db-admin", "", timedelta(minutes=5))
    with pytest.raises(AccessDenied, match='role "db-admin"'):
        auth.access.check(elevated)
    auth.locks.remove(ADMIN, auth.locks.list(ADMIN)[0]["metadata"]["name"])
    auth.access.check(elevated)
    auth.requests.delete(ADMIN, rid)
    assert events(auth, "access_request.delete")[0]["code"] == "T5003I"
    with pytest.raises(NotLoggedIn, match=f"access request {rid} is no longer approved"):
        auth.access.check(elevated)
    with pytest.raises(NotFound):
        assume(auth, alice, [rid])


def test_deleting_the_user_stops_a_certificate_with_an_approved_request(setup) -> None:
    auth, _ = setup
    alice, bob = login(auth, "alice"), login(auth, "bob")
    rid = create(auth, alice)["metadata"]["name"]
    auth.requests.review(bob, rid, True, "")
    elevated = assume(auth, alice, [rid])
    issued = [e for e in events(auth, "cert.create") if e["identity"].get("access_requests") == [rid]]
    assert issued and "db-admin" in issued[0]["identity"]["roles"]
    auth.users.remove(ADMIN, "alice")
    with pytest.raises(AccessDenied, match='user "alice" was deleted'):
        auth.access.check(elevated)


def test_another_users_request_cannot_be_assumed_or_deleted(setup) -> None:
    auth, _ = setup
    alice, bob, carol = login(auth, "alice"), login(auth, "bob"), login(auth, "carol")
    rid = create(auth, alice)["metadata"]["name"]
    auth.requests.review(bob, rid, True, "")
    with pytest.raises(NotFound):
        assume(auth, carol, [rid])
    with pytest.raises(AccessDenied):  # carol may see it (reviewer) but not delete it
        auth.requests.delete(carol, rid)
    assert [e["success"] for e in events(auth, "access_request.delete")] == [False]
    auth.requests.delete(alice, rid)  # her own
    assert [e["success"] for e in events(auth, "access_request.delete")] == [False, True]


def test_concurrent_reviews_are_all_counted(setup) -> None:
    import threading

    import yaml

    auth, _ = setup
    auth.resources.create(ADMIN, [yaml.safe_load(
        "kind: role\nversion: v7\nmetadata: {name: many}\nspec:\n  allow:\n    request:\n"
        "      roles: [db-admin]\n      thresholds: [{approve: 6}]\n")], False)
    auth.users.update(ADMIN, "alice", ["access", "many"], {})
    names = [f"rev{i}" for i in range(6)]
    for name in names:
        auth.users.add(ADMIN, name, ["access", "reviewer"], {}, None)
    reviewers = [login(auth, name) for name in names]
    rid = create(auth, login(auth, "alice"))["metadata"]["name"]
    start = threading.Barrier(len(reviewers))

    def go(who: Identity) -> None:
        start.wait()
        auth.requests.review(who, rid, True, "")

    threads = [threading.Thread(target=go, args=(r,)) for r in reviewers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    doc = auth.requests.get(ADMIN, rid)
    assert sorted(r["author"] for r in doc["spec"]["reviews"]) == names
    assert doc["spec"]["state"] == "APPROVED"
    assert len([e for e in events(auth, "access_request.update") if e["state"] == "APPROVED"]) == 1
