"""Locks, deleted users and roles taken away: the check every hop runs (rbac.revocation, rbac.locks)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from common.errors import BadParameter
from common.identity import KIND_ADMIN, KIND_HOST, Identity
from pteleport.rbac.locks import Lock, LockMetadata, LockSpec, LockTarget, lock_to_dict, parse_lock
from pteleport.rbac.revocation import AccessState, UserAccess, refusal

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ALICE = Identity("alice", roles=("access", "db"), issued=NOW - timedelta(minutes=5))


def lock(user: str | None = None, role: str | None = None, message: str = "", expires: datetime | None = None) -> Lock:
    return Lock(
        metadata=LockMetadata(name=f"lock-{user or role}"),
        spec=LockSpec(target=LockTarget(user=user, role=role), message=message, expires=expires, created_at=NOW),
    )


def state(*locks: Lock, users: dict[str, UserAccess] | None = None) -> AccessState:
    default = {"alice": UserAccess(frozenset({"access", "db"}), NOW - timedelta(days=1))}
    return AccessState.build(list(locks), default if users is None else users, "r1")


def test_a_user_with_a_current_certificate_passes() -> None:
    assert refusal(state(), ALICE, NOW) is None


def test_a_lock_on_the_user_refuses_with_its_message() -> None:
    reason = refusal(state(lock(user="alice", message="incident 42")), ALICE, NOW)
    assert reason is not None and reason.kind == "lock"
    assert reason.message == 'access is locked for user "alice": incident 42'


def test_a_lock_on_a_role_the_certificate_carries_refuses() -> None:
    reason = refusal(state(lock(role="db")), ALICE, NOW)
    assert reason is not None and 'role "db"' in reason.message and "pctl locks ls" in reason.message
    assert refusal(state(lock(role="auditor")), ALICE, NOW) is None


def test_an_expired_lock_no_longer_applies() -> None:
    assert refusal(state(lock(user="alice", expires=NOW - timedelta(seconds=1))), ALICE, NOW) is None
    assert refusal(state(lock(user="alice", expires=NOW + timedelta(seconds=1))), ALICE, NOW) is not None


def test_a_deleted_user_is_refused() -> None:
    reason = refusal(state(users={}), ALICE, NOW)
    assert reason is not None and reason.kind == "gone" and "no longer exists" in reason.message


def test_a_role_taken_from_the_user_refuses_older_certificates() -> None:
    users = {"alice": UserAccess(frozenset({"access"}), NOW - timedelta(days=1))}
    reason = refusal(state(users=users), ALICE, NOW)
    assert reason is not None and reason.kind == "stale"
    assert 'role "db" was taken from user "alice"' in reason.message and "log in again" in reason.message


def test_a_certificate_of_an_earlier_user_with_the_same_name_is_refused() -> None:
    users = {"alice": UserAccess(frozenset({"access", "db"}), NOW - timedelta(minutes=1))}
    reason = refusal(state(users=users), ALICE, NOW)
    assert reason is not None and "earlier user" in reason.message
    # Issued in the same second as the user was created: the user's own (whole-second precision).
    same_second = Identity("alice", roles=("access",), issued=NOW.replace(microsecond=0))
    users = {"alice": UserAccess(frozenset({"access"}), NOW.replace(microsecond=500_000))}
    assert refusal(state(users=users), same_second, NOW) is None


def test_admin_and_host_identities_are_not_users() -> None:
    locked = state(lock(user="admin"), users={})
    assert refusal(locked, Identity("admin", kind=KIND_ADMIN), NOW) is None
    assert refusal(locked, Identity("host-1", kind=KIND_HOST), NOW) is None


def test_the_snapshot_round_trips_and_its_version_follows_its_content() -> None:
    one = state(lock(user="alice", message="m"))
    copy = AccessState.from_dict(one.to_dict())
    assert copy.version == one.version and copy.to_dict() == one.to_dict()
    assert refusal(copy, ALICE, NOW) is not None
    assert state().version != one.version
    assert state().version == state().version


def test_parse_lock_names_the_bad_field() -> None:
    good = lock_to_dict(lock(user="alice", message="x"))
    assert parse_lock(good).spec.target.user == "alice"
    with pytest.raises(BadParameter, match="exactly one of user or role"):
        parse_lock({**good, "spec": {"target": {"user": "a", "role": "b"}}})
    with pytest.raises(BadParameter, match="exactly one of user or role"):
        parse_lock({**good, "spec": {"target": {}}})
    with pytest.raises(BadParameter, match=r"unknown field spec\.target\.login"):
        parse_lock({**good, "spec": {"target": {"user": "a", "login": "root"}}})
    with pytest.raises(BadParameter, match="time zone"):
        parse_lock({**good, "spec": {"target": {"user": "a"}, "expires": "2026-12-01T12:00:00"}})
