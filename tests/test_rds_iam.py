"""RDS/Aurora IAM auth tokens (pteleport.dbagent.aws), verified without botocore's help.

Everything runs offline: the AWS environment is replaced by fixed keys (or none), instance
metadata is disabled, STS is stubbed with botocore's Stubber or a fake session, and any
socket connect or DNS lookup fails the test.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import socket
import subprocess
import sys
from typing import Any
from urllib.parse import parse_qsl, quote

import pytest
from botocore.exceptions import EndpointConnectionError
from botocore.stub import Stubber

from common.errors import AccessDenied, ConnectionProblem
from pteleport.dbagent import aws
from pteleport.dbagent.aws import rds_auth_token

HOST = "aurora.cluster-abc.us-west-1.rds.amazonaws.com"
PORT = 5432
USER = "alice"
REGION = "us-west-1"
ACCESS_KEY = "AKIDEXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
FROZEN = datetime.datetime(2026, 1, 2, 3, 4, 5)  # naive UTC, as botocore's clock returns
ROLE_ARN = "arn:aws:iam::123456789012:role/rds-connect"
TEMP_ACCESS_KEY = "ASIATEMPORARYKEY0001"
TEMP_SECRET_KEY = "temporary/secret+key/0123456789abcdefghij"
TEMP_SESSION_TOKEN = "FwoGZXIvYXdzEXAMPLE//session+token/" + "x" * 300
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def offline_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ambient AWS configuration, no instance metadata, no sockets, a frozen signing clock."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"test tried to use the network: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)

    import botocore.auth

    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *args, **kwargs: FROZEN)


@pytest.fixture
def fixed_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)


class StubbedSTS:
    """A ``session_factory`` making real boto3 sessions whose STS clients answer from a Stubber."""

    def __init__(self, configure: Any) -> None:
        self.configure = configure
        self.stubbers: list[Stubber] = []
        self.sessions: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> Any:
        import boto3

        self.sessions.append(kwargs)
        session = boto3.session.Session(**kwargs)
        make_client = session.client

        def client(service_name: str, *args: Any, **kw: Any) -> Any:
            made = make_client(service_name, *args, **kw)
            if service_name == "sts":
                stubber = Stubber(made)
                self.configure(stubber)
                stubber.activate()
                self.stubbers.append(stubber)
            return made

        session.client = client  # type: ignore[method-assign]
        return session

    def assert_all_called(self) -> None:
        assert self.stubbers, "STS was never asked"
        for stubber in self.stubbers:
            stubber.assert_no_pending_responses()


def assume_role_params(external_id: str | None = None) -> dict[str, str]:
    params = {"RoleArn": ROLE_ARN, "RoleSessionName": "pteleport-db-agent"}
    if external_id:
        params["ExternalId"] = external_id
    return params


def assume_role_response() -> dict[str, Any]:
    return {
        "Credentials": {
            "AccessKeyId": TEMP_ACCESS_KEY,
            "SecretAccessKey": TEMP_SECRET_KEY,
            "SessionToken": TEMP_SESSION_TOKEN,
            "Expiration": FROZEN + datetime.timedelta(hours=1),
        },
        "AssumedRoleUser": {
            "AssumedRoleId": "AROAEXAMPLEROLEID:pteleport-db-agent",
            "Arn": "arn:aws:sts::123456789012:assumed-role/rds-connect/pteleport-db-agent",
        },
    }


# --------------------------------------------------------------------------- independent SigV4 check


def parse_token(token: str) -> tuple[str, int, dict[str, str]]:
    """``host:port/?query`` -> (host, port, decoded query)."""
    assert "://" not in token, "the token must carry no scheme"
    endpoint, sep, query = token.partition("/?")
    assert sep, f"not host:port/?query: {token[:80]}"
    host, _, port = endpoint.rpartition(":")
    pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    params = dict(pairs)
    assert len(params) == len(pairs), "repeated query parameter"
    return host, int(port), params


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _rfc3986(value: str) -> str:
    return quote(value, safe="-_.~")


def sigv4_signature(host: str, port: int, params: dict[str, str], secret: str) -> str:
    """The SigV4 query signature AWS computes for this presigned rds-db ``connect`` URL."""
    signed = {k: v for k, v in params.items() if k != "X-Amz-Signature"}
    canonical_query = "&".join(f"{k}={v}" for k, v in sorted((_rfc3986(k), _rfc3986(v)) for k, v in signed.items()))
    canonical_request = "\n".join(["GET", "/", canonical_query, f"host:{host}:{port}", "", "host", EMPTY_SHA256])
    _, date, region, service, terminator = params["X-Amz-Credential"].split("/")
    scope = f"{date}/{region}/{service}/{terminator}"
    string_to_sign = "\n".join(
        [
            params["X-Amz-Algorithm"],
            params["X-Amz-Date"],
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, terminator):
        key = _hmac(key, part)
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def verifies(token: str, secret: str) -> bool:
    host, port, params = parse_token(token)
    return hmac.compare_digest(sigv4_signature(host, port, params, secret), params["X-Amz-Signature"])


def check_connect_token(token: str, access_key: str) -> dict[str, str]:
    """Assert everything but the signature; return the query."""
    host, port, params = parse_token(token)
    assert (host, port) == (HOST, PORT)
    assert params["Action"] == "connect"
    assert params["DBUser"] == USER
    assert params["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert params["X-Amz-Credential"] == f"{access_key}/20260102/{REGION}/rds-db/aws4_request"
    assert params["X-Amz-Date"] == "20260102T030405Z"
    assert params["X-Amz-Expires"] == "900"
    assert params["X-Amz-SignedHeaders"] == "host"
    assert len(params["X-Amz-Signature"]) == 64
    issued = datetime.datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
    assert issued + datetime.timedelta(seconds=int(params["X-Amz-Expires"])) == datetime.datetime(2026, 1, 2, 3, 19, 5)
    return params


# --------------------------------------------------------------------------- (a) token with fixed credentials


def test_token_has_the_right_claims_and_a_valid_signature(fixed_credentials: None) -> None:
    token = rds_auth_token(HOST, PORT, USER, REGION)

    params = check_connect_token(token, ACCESS_KEY)
    assert "X-Amz-Security-Token" not in params
    assert set(params) == {
        "Action",
        "DBUser",
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
    }
    assert verifies(token, SECRET_KEY)


def test_tampered_token_does_not_verify(fixed_credentials: None) -> None:
    token = rds_auth_token(HOST, PORT, USER, REGION)
    assert verifies(token, SECRET_KEY)

    assert not verifies(token.replace("DBUser=alice", "DBUser=mallory"), SECRET_KEY)
    assert not verifies(token.replace(f"{HOST}:{PORT}", f"{HOST}:5433"), SECRET_KEY)
    assert not verifies(token.replace("X-Amz-Expires=900", "X-Amz-Expires=3600"), SECRET_KEY)
    assert not verifies(token, SECRET_KEY + "x")


def test_token_is_for_exactly_the_requested_user_host_port_and_region(fixed_credentials: None) -> None:
    token = rds_auth_token("pg.abc.eu-central-1.rds.amazonaws.com", 6543, "app_user@corp", "eu-central-1")

    host, port, params = parse_token(token)
    assert (host, port) == ("pg.abc.eu-central-1.rds.amazonaws.com", 6543)
    assert params["DBUser"] == "app_user@corp"
    assert params["X-Amz-Credential"] == f"{ACCESS_KEY}/20260102/eu-central-1/rds-db/aws4_request"
    assert verifies(token, SECRET_KEY)


# --------------------------------------------------------------------------- (b) no credentials


def _assert_no_credentials_error(err: AccessDenied) -> None:
    message = err.message
    assert message.startswith("no AWS credentials available to the database service: ")
    assert "IAM role" in message and "AWS_ACCESS_KEY_ID" in message and "AWS_SECRET_ACCESS_KEY" in message
    assert ". " not in message and "\n" not in message, "one sentence"


def test_no_credentials_is_access_denied_with_the_fix() -> None:
    with pytest.raises(AccessDenied) as caught:
        rds_auth_token(HOST, PORT, USER, REGION)
    _assert_no_credentials_error(caught.value)
    assert caught.value.detail and "NoCredentialsError" in caught.value.detail


def test_partial_credentials_is_the_same_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    with pytest.raises(AccessDenied) as caught:
        rds_auth_token(HOST, PORT, USER, REGION)
    _assert_no_credentials_error(caught.value)


def test_no_credentials_to_assume_the_role_with() -> None:
    # A real STS client: botocore fails while signing, before any request is sent.
    with pytest.raises(AccessDenied) as caught:
        rds_auth_token(HOST, PORT, USER, REGION, assume_role_arn=ROLE_ARN)
    _assert_no_credentials_error(caught.value)


# --------------------------------------------------------------------------- (c) assume role


def test_assume_role_signs_with_the_temporary_credentials(fixed_credentials: None) -> None:
    sts = StubbedSTS(lambda s: s.add_response("assume_role", assume_role_response(), assume_role_params()))

    token = rds_auth_token(HOST, PORT, USER, REGION, assume_role_arn=ROLE_ARN, session_factory=sts)

    sts.assert_all_called()
    params = check_connect_token(token, TEMP_ACCESS_KEY)
    assert params["X-Amz-Security-Token"] == TEMP_SESSION_TOKEN
    assert verifies(token, TEMP_SECRET_KEY)
    assert not verifies(token, SECRET_KEY)
    assert sts.sessions[-1] == {
        "aws_access_key_id": TEMP_ACCESS_KEY,
        "aws_secret_access_key": TEMP_SECRET_KEY,
        "aws_session_token": TEMP_SESSION_TOKEN,
        "region_name": REGION,
    }


def test_assume_role_passes_the_external_id(fixed_credentials: None) -> None:
    sts = StubbedSTS(lambda s: s.add_response("assume_role", assume_role_response(), assume_role_params("ext-42")))

    token = rds_auth_token(
        HOST, PORT, USER, REGION, assume_role_arn=ROLE_ARN, external_id="ext-42", session_factory=sts
    )

    sts.assert_all_called()
    assert parse_token(token)[2]["X-Amz-Security-Token"] == TEMP_SESSION_TOKEN


# --------------------------------------------------------------------------- (d) assume role refused / failing


def _deny(stubber: Stubber, external_id: str | None) -> None:
    stubber.add_client_error(
        "assume_role",
        service_error_code="AccessDenied",
        service_message=f"User: arn:aws:iam::123456789012:user/agent is not authorized to perform: "
        f"sts:AssumeRole on resource: {ROLE_ARN}",
        http_status_code=403,
        expected_params=assume_role_params(external_id),
    )


def test_assume_role_access_denied_names_the_role_and_trust_relationship(fixed_credentials: None) -> None:
    sts = StubbedSTS(lambda s: _deny(s, None))

    with pytest.raises(AccessDenied) as caught:
        rds_auth_token(HOST, PORT, USER, REGION, assume_role_arn=ROLE_ARN, session_factory=sts)

    sts.assert_all_called()
    message = caught.value.message
    assert ROLE_ARN in message and "trust relationship" in message
    assert "external ID" not in message
    assert ". " not in message


def test_assume_role_access_denied_with_external_id(fixed_credentials: None) -> None:
    sts = StubbedSTS(lambda s: _deny(s, "ext-42"))

    with pytest.raises(AccessDenied) as caught:
        rds_auth_token(HOST, PORT, USER, REGION, assume_role_arn=ROLE_ARN, external_id="ext-42", session_factory=sts)

    sts.assert_all_called()  # the Stubber also checked ExternalId=ext-42 was sent
    message = caught.value.message
    assert ROLE_ARN in message and "trust relationship" in message and "external ID" in message
    assert "ext-42" not in message


def test_other_sts_error_is_connection_problem(fixed_credentials: None) -> None:
    sts = StubbedSTS(
        lambda s: s.add_client_error(
            "assume_role",
            service_error_code="RegionDisabledException",
            service_message="STS is not activated in this region for account 123456789012.",
            http_status_code=403,
        )
    )

    with pytest.raises(ConnectionProblem) as caught:
        rds_auth_token(HOST, PORT, USER, REGION, assume_role_arn=ROLE_ARN, session_factory=sts)

    message = caught.value.message
    assert ROLE_ARN in message and "STS" in message and "RegionDisabledException" in message


class _UnreachableSTS:
    """A session whose STS client cannot reach its endpoint."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs

    def client(self, service_name: str, **kwargs: Any) -> Any:
        assert service_name == "sts"
        session = self

        class Client:
            def assume_role(self, **params: Any) -> Any:
                session.params = params
                raise EndpointConnectionError(endpoint_url=f"https://sts.{REGION}.amazonaws.com/")

        return Client()


def test_unreachable_sts_is_connection_problem() -> None:
    with pytest.raises(ConnectionProblem) as caught:
        rds_auth_token(HOST, PORT, USER, REGION, assume_role_arn=ROLE_ARN, session_factory=_UnreachableSTS)

    message = caught.value.message
    assert ROLE_ARN in message and "STS" in message and f"https://sts.{REGION}.amazonaws.com/" in message


# --------------------------------------------------------------------------- start-up cost


def test_importing_the_module_does_not_import_boto3() -> None:
    code = "import sys, pteleport.dbagent.aws; print(sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert aws.ROLE_SESSION_NAME == "pteleport-db-agent"
