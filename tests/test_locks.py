"""Locks in the auth service (in memory): create, list, remove, user deletion, and what they stop."""

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
    auth.users.add(ADMIN, "alice", ["access"], {}, None)
    return auth, clock


def cert_for(auth: AuthServer, user: str, roles: tuple[str, ...] = ("access",)) -> Identity:
    key = public_key_pem(generate_private_key()).decode()
    pem = auth.certs.sign_user(Identity(user, roles=roles), key, timedelta(hours=1))
    return identity_from_pem(pem)


def events(auth: AuthServer, name: str) -> list[dict]:
    return [e for e in auth.ctx.audit.search(limit=10_000) if e["event"] == name]


def test_a_lock_stops_the_users_certificates_and_new_ones(setup) -> None:
    auth, _clock = setup
    alice = cert_for(auth, "alice")
    auth.access.check(alice)
    doc = auth.locks.create(ADMIN, "alice", None, "incident 42", timedelta(hours=1))
    with pytest.raises(AccessDenied, match='access is locked for user "alice": incident 42'):
        auth.access.check(alice)
    with pytest.raises(AccessDenied, match="incident 42"):
        cert_for(auth, "alice")
    assert [d["metadata"]["name"] for d in auth.locks.list(ADMIN)] == [doc["metadata"]["name"]]
    created = events(auth, "lock.created")
    assert created[0]["code"] == "TLK00I" and created[0]["target"] == {"user": "alice"}
    auth.locks.remove(ADMIN, doc["metadata"]["name"])
    auth.access.check(alice)
    assert events(auth, "lock.deleted")[0]["code"] == "TLK01I"
    with pytest.raises(NotFound, match="pctl locks ls"):
        auth.locks.remove(ADMIN, doc["metadata"]["name"])


def test_a_lock_ends_by_itself_at_its_ttl(setup) -> None:
    auth, clock = setup
    alice = cert_for(auth, "alice")
    auth.locks.create(ADMIN, None, "access", "", timedelta(minutes=10))
    with pytest.raises(AccessDenied, match='role "access"'):
        auth.access.check(alice)
    clock.now += timedelta(minutes=11)
    auth.access.check(alice)
    assert auth.locks.list(ADMIN) == []


def test_lock_arguments_are_checked(setup) -> None:
    auth, _ = setup
    with pytest.raises(BadParameter, match="exactly one of --user or --role"):
        auth.locks.create(ADMIN, "alice", "access", "", None)
    with pytest.raises(BadParameter, match="exactly one"):
        auth.locks.create(ADMIN, None, None, "", None)
    with pytest.raises(NotFound, match='role "nope" does not exist'):
        auth.locks.create(ADMIN, None, "nope", "", None)
    with pytest.raises(AccessDenied):
        auth.locks.create(Identity("alice", roles=("access",)), "bob", None, "", None)


def test_deleting_a_user_locks_them_and_a_new_user_of_that_name_starts_clean(setup) -> None:
    auth, clock = setup
    old = cert_for(auth, "alice")
    auth.users.remove(ADMIN, "alice")
    locks = auth.locks.list(ADMIN)
    assert [d["spec"]["target"] for d in locks] == [{"user": "alice"}]
    assert locks[0]["spec"]["message"] == 'user "alice" was deleted'
    with pytest.raises(AccessDenied, match="was deleted"):
        auth.access.check(old)
    clock.now += timedelta(minutes=2)
    auth.users.add(ADMIN, "alice", ["access"], {}, None)
    assert auth.locks.list(ADMIN) == []  # the deletion's lock went with the new user
    with pytest.raises(NotLoggedIn, match="earlier user"):
        auth.access.check(old)  # the old certificate still does not work
    auth.access.check(cert_for(auth, "alice"))


def test_taking_a_role_from_a_user_stops_certificates_that_carry_it(setup) -> None:
    auth, _ = setup
    auth.users.update(ADMIN, "alice", ["access", "auditor"], {})
    both = cert_for(auth, "alice", ("access", "auditor"))
    auth.access.check(both)
    auth.users.update(ADMIN, "alice", ["access"], {})
    with pytest.raises(NotLoggedIn, match='role "auditor" was taken'):
        auth.access.check(both)


def test_create_and_get_locks_as_resources(setup) -> None:
    auth, _ = setup
    doc = {
        "kind": "lock",
        "version": "v2",
        "metadata": {"name": "freeze"},
        "spec": {"target": {"role": "access"}, "message": "maintenance"},
    }
    assert auth.resources.create(ADMIN, [doc], False) == ['lock "freeze" has been created']
    [got] = auth.resources.get(ADMIN, "locks", None)
    assert got["spec"]["created_by"] == "admin" and got["spec"]["message"] == "maintenance"
    assert auth.resources.remove(ADMIN, "lock", "freeze") == 'lock "freeze" has been deleted'
