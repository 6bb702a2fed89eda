"""IAM joining in one process: the auth service, the agent's signing code and a fake STS.

The end-to-end file (test_iam_join_e2e.py) runs real daemons; here the rules are checked one
by one: which hosts count as STS, ARN globs, token validation, the challenge's lifetime and
single use, the per-address bound on challenges, and the token's scope bound at an IAM join.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from common.errors import AccessDenied, BadParameter, LimitExceeded
from common.identity import KIND_ADMIN, Identity, identity_from_pem
from common.tls import generate_private_key, public_key_pem
from pteleport.audit.memory_log import MemoryAuditLog
from pteleport.auth.context import AuthSettings
from pteleport.auth.join_iam import CHALLENGES_PER_MINUTE, allowed_sts_host, arn_matches
from pteleport.auth.server import AuthServer
from pteleport.dbagent.join_iam import signed_identity_request
from pteleport.storage.memory import MemoryBackend
from tests.fake_sts import FakeSTS

ADMIN = Identity(username="admin", kind=KIND_ADMIN)
ACCOUNT = "111111111111"
ARN = f"arn:aws:sts::{ACCOUNT}:assumed-role/db-agent/i-0abc"
KEY, SECRET = "ASIAUNITTEST0000001", "unit/test/secret/0123456789abcdefghijklm"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[AuthServer, FakeSTS, Clock]]:
    sts = FakeSTS().start()
    sts.add_key(KEY, SECRET, ARN)
    for name, value in {
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    clock = Clock()
    settings = AuthSettings("t", "x:3080", iam_sts_override=sts.url)
    auth = AuthServer(MemoryBackend(clock=clock), MemoryAuditLog(), clock, settings)
    auth.init_cluster()
    try:
        yield auth, sts, clock
    finally:
        sts.stop()


def iam_token(auth: AuthServer, allow: list[dict], **scope: object) -> str:
    doc = auth.tokens.add(
        ADMIN, ["db"], None, "aws-agents", None, scope.get("db_names"), join_method="iam", allow=allow  # type: ignore[arg-type]
    )
    return doc["metadata"]["name"]


def iam_join(auth: AuthServer, token: str, remote: str = "10.0.0.9:1") -> tuple[bytes, str]:
    challenge = auth.iam_join.challenge(remote)
    key = public_key_pem(generate_private_key()).decode()
    return auth.iam_join.join(token, "Db", "agent", key, challenge, signed_identity_request(challenge), remote)


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("sts.amazonaws.com", True),
        ("sts.us-west-2.amazonaws.com", True),
        ("sts-fips.us-east-1.amazonaws.com", True),
        ("sts.us-gov-west-1.amazonaws.com", True),
        ("sts.cn-north-1.amazonaws.com.cn", True),
        ("STS.EU-WEST-1.AMAZONAWS.COM", True),
        ("sts.amazonaws.com.evil.example", False),
        ("evilsts.amazonaws.com", False),
        ("sts.us-west-2.amazonaws.com:8443", False),
        ("iam.amazonaws.com", False),
        ("127.0.0.1", False),
    ],
)
def test_only_aws_sts_hosts_count(host: str, ok: bool) -> None:
    assert allowed_sts_host(host) is ok


def test_arn_globs_take_star_and_question_mark_and_nothing_else() -> None:
    assert arn_matches("arn:aws:sts::111111111111:assumed-role/db-agent/*", ARN)
    assert arn_matches("arn:aws:sts::11111111111?:assumed-role/db-agent/i-0abc", ARN)
    assert not arn_matches("arn:aws:sts::111111111111:assumed-role/db-agent", ARN)
    assert not arn_matches("arn:aws:sts::111111111111:assumed-role/[d]b-agent/*", ARN)
    assert not arn_matches("arn:aws:sts::.*", ARN)  # a dot is a dot


def test_an_iam_token_needs_allow_rules_of_the_right_form(world: tuple[AuthServer, FakeSTS, Clock]) -> None:
    auth, _, _ = world
    with pytest.raises(BadParameter, match="needs at least one allow rule"):
        iam_token(auth, [])
    with pytest.raises(BadParameter, match='aws_account "12" is not an AWS account id'):
        iam_token(auth, [{"aws_account": "12"}])
    with pytest.raises(BadParameter, match="is not an ARN"):
        iam_token(auth, [{"aws_arn": "db-agent"}])


def test_a_matching_identity_joins_with_the_tokens_scope(world: tuple[AuthServer, FakeSTS, Clock]) -> None:
    auth, sts, _ = world
    token = iam_token(auth, [{"aws_account": ACCOUNT, "aws_arn": "arn:aws:sts::*:assumed-role/db-agent/*"}],
                      db_names=["aurora"])
    cert, host_id = iam_join(auth, token)
    identity = identity_from_pem(cert)
    assert identity.username == host_id and identity.host_scope is not None
    assert identity.host_scope.to_dict()["db_names"] == ["aurora"]
    assert sts.requests[-1].verified and sts.requests[-1].headers["host"] == "sts.eu-west-1.amazonaws.com"


def test_a_rule_for_another_arn_refuses(world: tuple[AuthServer, FakeSTS, Clock]) -> None:
    auth, _, _ = world
    token = iam_token(auth, [{"aws_account": ACCOUNT, "aws_arn": "arn:aws:sts::*:assumed-role/web/*"}])
    with pytest.raises(AccessDenied, match=f'AWS identity {ARN} \\(account {ACCOUNT}\\) is not allowed by IAM token'):
        iam_join(auth, token)


def test_a_challenge_expires_after_a_minute(world: tuple[AuthServer, FakeSTS, Clock]) -> None:
    auth, _, clock = world
    token = iam_token(auth, [{"aws_account": ACCOUNT}])
    challenge = auth.iam_join.challenge("10.0.0.9:1")
    request = signed_identity_request(challenge)
    clock.now += timedelta(minutes=2)
    with pytest.raises(AccessDenied, match="challenge"):
        auth.iam_join.join(token, "Db", "a", public_key_pem(generate_private_key()).decode(), challenge, request,
                           "10.0.0.9:1")


def test_a_request_signed_for_another_challenge_is_refused(world: tuple[AuthServer, FakeSTS, Clock]) -> None:
    auth, sts, _ = world
    token = iam_token(auth, [{"aws_account": ACCOUNT}])
    mine = auth.iam_join.challenge("10.0.0.9:1")
    other = auth.iam_join.challenge("10.0.0.9:1")
    before = len(sts.requests)
    with pytest.raises(AccessDenied, match="does not carry this join's challenge"):
        auth.iam_join.join(token, "Db", "a", public_key_pem(generate_private_key()).decode(), mine,
                           signed_identity_request(other), "10.0.0.9:1")
    assert len(sts.requests) == before


def test_challenges_per_address_are_bounded(world: tuple[AuthServer, FakeSTS, Clock]) -> None:
    auth, _, _ = world
    for _ in range(CHALLENGES_PER_MINUTE):
        auth.iam_join.challenge("10.0.0.7:1")
    with pytest.raises(LimitExceeded, match="too many IAM join challenges from this address"):
        auth.iam_join.challenge("10.0.0.7:5")
    auth.iam_join.challenge("10.0.0.8:1")  # another address is not affected
