"""Role chaining for RDS IAM: what the agent sends to STS, link by link, and the token it signs.

A fake STS on localhost (tests/fake_sts.py) checks each AssumeRole's SigV4 signature against
the key that signed it, the role's trust policy and external ID, and records the request.
The chain: the agent's own keys, then the database's ``aws.assume_role_arn`` (with
``aws.external_id``), then the db user's IAM role. The RDS token must verify with the last
link's secret. boto3 reaches the fake through ``AWS_ENDPOINT_URL_STS``, as any AWS SDK would.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.errors import AccessDenied, ConnectionProblem
from pteleport.dbagent.aws import rds_auth_token
from pteleport.dbagent.credentials import Credentials, LocalSettings
from pteleport.dbagent.upstream import UpstreamTLS
from tests.fake_sts import FakeSTS
from tests.test_rds_iam import parse_token, verifies

HOST = "aurora.cluster-abc.us-west-1.rds.amazonaws.com"
PORT = 5432
REGION = "us-west-1"
AGENT_KEY, AGENT_SECRET = "AKIAAGENT0000000001", "agent/secret/key/0123456789abcdefghijklm"
AGENT_ARN = "arn:aws:iam::111111111111:user/db-agent"
ACCESS_ROLE = "arn:aws:iam::222222222222:role/pteleport-access"
ANALYST_ROLE = "arn:aws:iam::222222222222:role/analyst"
EXTERNAL_ID = "ext-7f3a"


@pytest.fixture
def sts(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSTS]:
    fake = FakeSTS(region=REGION).start()
    fake.add_key(AGENT_KEY, AGENT_SECRET, AGENT_ARN)
    fake.add_role(ACCESS_ROLE, trusted=[AGENT_ARN], external_id=EXTERNAL_ID)
    fake.add_role(ANALYST_ROLE, trusted=[ACCESS_ROLE])
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AGENT_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AGENT_SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", fake.url)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    try:
        yield fake
    finally:
        fake.stop()


def test_each_link_is_signed_by_the_previous_one_and_the_token_by_the_last(sts: FakeSTS) -> None:
    token = rds_auth_token(HOST, PORT, ANALYST_ROLE, REGION, assume_role_arn=ACCESS_ROLE, external_id=EXTERNAL_ID)

    first, second = sts.requests
    assert (first.action, first.outcome, first.verified) == ("AssumeRole", "ok", True)
    assert first.access_key == AGENT_KEY  # the agent's own keys sign the first link
    assert first.params["RoleArn"] == ACCESS_ROLE
    assert first.params["ExternalId"] == EXTERNAL_ID
    assert first.params["RoleSessionName"] == "pteleport-db-agent"
    access_key = next(
        k for k in sts.keys.values() if k.arn.startswith("arn:aws:sts::222222222222:assumed-role/pteleport-access/")
    )
    assert (second.action, second.outcome, second.verified) == ("AssumeRole", "ok", True)
    assert second.access_key == access_key.access_key  # signed by the first link's credentials
    assert second.headers["x-amz-security-token"] == access_key.session_token
    assert second.params["RoleArn"] == ANALYST_ROLE
    assert "ExternalId" not in second.params  # the external ID belongs to assume_role_arn only
    assert second.params["RoleSessionName"] == "pteleport-db-agent"

    analyst = next(k for k in sts.keys.values() if k.arn.startswith("arn:aws:sts::222222222222:assumed-role/analyst/"))
    host, port, params = parse_token(token)
    assert (host, port, params["DBUser"]) == (HOST, PORT, "analyst")  # the role's name is the PostgreSQL user
    assert params["X-Amz-Credential"].split("/")[0] == analyst.access_key
    assert params["X-Amz-Security-Token"] == analyst.session_token
    assert verifies(token, analyst.secret_key)
    assert not verifies(token, access_key.secret_key)


def test_a_plain_db_user_stops_the_chain_at_assume_role_arn(sts: FakeSTS) -> None:
    token = rds_auth_token(HOST, PORT, "app_user", REGION, assume_role_arn=ACCESS_ROLE, external_id=EXTERNAL_ID)
    assert [r.params["RoleArn"] for r in sts.requests] == [ACCESS_ROLE]
    access = next(k for k in sts.keys.values() if "assumed-role/pteleport-access/" in k.arn)
    _, _, params = parse_token(token)
    assert params["DBUser"] == "app_user"
    assert verifies(token, access.secret_key)


def test_a_role_db_user_without_assume_role_arn_is_one_link(sts: FakeSTS) -> None:
    sts.add_role(ANALYST_ROLE, trusted=[AGENT_ARN])
    token = rds_auth_token(HOST, PORT, ANALYST_ROLE, REGION)
    (only,) = sts.requests
    assert (only.access_key, only.params["RoleArn"], only.verified) == (AGENT_KEY, ANALYST_ROLE, True)
    analyst = next(k for k in sts.keys.values() if "assumed-role/analyst/" in k.arn)
    assert verifies(token, analyst.secret_key)


def test_a_refused_middle_link_names_both_roles_and_the_statement_to_add(sts: FakeSTS) -> None:
    sts.add_role(ANALYST_ROLE, trusted=["arn:aws:iam::222222222222:role/someone-else"])
    with pytest.raises(AccessDenied) as caught:
        rds_auth_token(HOST, PORT, ANALYST_ROLE, REGION, assume_role_arn=ACCESS_ROLE, external_id=EXTERNAL_ID)
    assert caught.value.message == (
        f"IAM role {ACCESS_ROLE} may not assume IAM role {ANALYST_ROLE}: add this statement to the trust"
        f" relationship (trust policy) of {ANALYST_ROLE}: "
        '{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::222222222222:role/pteleport-access"},'
        ' "Action": "sts:AssumeRole"}'
    )
    assert [r.outcome for r in sts.requests] == ["ok", "AccessDenied"]


def test_a_refused_first_link_names_the_agents_identity_and_the_external_id_condition(sts: FakeSTS) -> None:
    with pytest.raises(AccessDenied) as caught:
        rds_auth_token(HOST, PORT, ANALYST_ROLE, REGION, assume_role_arn=ACCESS_ROLE, external_id="wrong-id")
    message = caught.value.message
    assert message == (
        f"the database service's own IAM identity ({AGENT_ARN}) may not assume IAM role {ACCESS_ROLE} with the"
        f" external ID configured for this database: add this statement to the trust relationship (trust policy)"
        f' of {ACCESS_ROLE}: {{"Effect": "Allow", "Principal": {{"AWS": "{AGENT_ARN}"}}, "Action": "sts:AssumeRole",'
        ' "Condition": {"StringEquals": {"sts:ExternalId": "<aws.external_id of this database>"}}}'
    )
    assert "wrong-id" not in message
    assert [r.outcome for r in sts.requests] == ["AccessDenied"]


def test_the_fake_refuses_a_forged_signature(sts: FakeSTS, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above mean something only if a wrong secret is refused."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not/the/agent/secret")
    with pytest.raises(ConnectionProblem, match="SignatureDoesNotMatch"):
        rds_auth_token(HOST, PORT, "app_user", REGION, assume_role_arn=ACCESS_ROLE, external_id=EXTERNAL_ID)
    assert [r.outcome for r in sts.requests][-1] == "SignatureDoesNotMatch"


def test_the_agents_credentials_path_uses_the_chain(sts: FakeSTS, tmp_path: Path) -> None:
    db = {
        "metadata": {"name": "aurora"},
        "spec": {
            "uri": f"{HOST}:{PORT}",
            "aws": {"region": REGION, "assume_role_arn": ACCESS_ROLE, "external_id": EXTERNAL_ID},
        },
    }
    creds = Credentials(None, tmp_path)  # type: ignore[arg-type]  # the IAM path never calls auth
    _tls, token = asyncio.run(creds.secret_for(db, LocalSettings(), ANALYST_ROLE, UpstreamTLS()))
    assert token is not None
    assert [r.params["RoleArn"] for r in sts.requests] == [ACCESS_ROLE, ANALYST_ROLE]
    analyst = next(k for k in sts.keys.values() if "assumed-role/analyst/" in k.arn)
    assert verifies(token, analyst.secret_key)
