"""Login rules in the auth service itself (in memory, with a controlled clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from common.errors import AccessDenied, LimitExceeded
from common.identity import KIND_ADMIN, Identity, identity_from_pem
from common.tls import generate_private_key, public_key_pem
from pteleport.audit.memory_log import MemoryAuditLog
from pteleport.auth import totp
from pteleport.auth.context import AuthSettings
from pteleport.auth.server import AuthServer
from pteleport.storage.memory import MemoryBackend

ADMIN = Identity(username="admin", kind=KIND_ADMIN)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def cluster() -> tuple[AuthServer, Clock]:
    clock = Clock()
    auth = AuthServer(MemoryBackend(clock=clock), MemoryAuditLog(), clock, AuthSettings("test", "127.0.0.1:3080"))
    auth.init_cluster()
    invite = auth.users.add(ADMIN, "alice", ["access"], {}, None)
    token = invite["metadata"]["name"]
    secret = auth.users.invite_details(token)["totp_secret"]
    auth.users.complete_invite(token, "correct horse", totp.code_at(secret, clock.now))
    return auth, clock


def login(auth: AuthServer, user: str, password: str, code: str, remote: str = "10.0.0.1:5555") -> object:
    key = public_key_pem(generate_private_key()).decode()
    return auth.login.login(user, password, code, key, None, remote)


def test_failures_from_one_address_are_rate_limited(cluster) -> None:
    auth, clock = cluster
    for i in range(20):
        with pytest.raises(AccessDenied, match="invalid user name, password or second factor"):
            login(auth, f"nobody{i}", "wrong", "000000")
    with pytest.raises(LimitExceeded, match="too many failed logins from this address"):
        login(auth, "alice", "correct horse", "000000")
    # Other addresses are not affected, and the window slides.
    with pytest.raises(AccessDenied):
        login(auth, "nobody", "wrong", "000000", remote="10.0.0.2:1")
    clock.now += timedelta(minutes=2)
    with pytest.raises(AccessDenied):
        login(auth, "nobody", "wrong", "000000")


def test_a_code_is_accepted_once_and_the_certificate_lasts_12_hours(cluster) -> None:
    auth, clock = cluster
    secret = auth.ctx.secrets.get("alice")["totp_secret"]
    clock.now += timedelta(seconds=60)
    code = totp.code_at(secret, clock.now)
    cert, identity = login(auth, "alice", "correct horse", code)
    assert identity.username == "alice"
    assert identity_from_pem(cert).expires == clock.now + timedelta(hours=12)
    with pytest.raises(AccessDenied):
        login(auth, "alice", "correct horse", code)
    events = auth.ctx.audit.search(event_types=["user.login"])
    assert [e["code"] for e in events] == ["T1000I", "T1000W"]
