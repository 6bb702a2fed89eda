"""RDS/Aurora IAM authentication: the auth token the agent sends as the password.

``generate_db_auth_token`` presigns an ``rds-db:connect`` URL locally with SigV4 (no network,
valid 15 minutes) from the service's ambient AWS credentials (environment, shared config,
instance profile, ECS task role, IRSA). With ``assume_role_arn`` the agent first assumes that
role through STS (with the external ID when set) and signs with the temporary credentials, so
the token carries ``X-Amz-Security-Token``.

Role chaining: when the db user is an IAM role ARN (``arn:aws:iam::ACCOUNT:role/NAME``), the
chain is the agent's own credentials, then ``assume_role_arn`` (if set), then that role; each
AssumeRole is signed with the previous link's credentials, the token with the last link's,
for the PostgreSQL user NAME. STS's endpoint is botocore's usual one (``AWS_ENDPOINT_URL_STS``
overrides it, as for any AWS SDK).

Failures become one-sentence errors that name the fix:

* no usable credentials -> ``AccessDenied`` ("no AWS credentials available to the database
  service: ...");
* STS refuses AssumeRole -> ``AccessDenied`` naming which identity could not assume which role
  and the trust policy statement to add (``trust_statement``);
* any other STS or botocore failure -> ``ConnectionProblem`` naming what failed.

boto3/botocore are imported inside the functions: they cost ~150 ms at start-up and only
agents serving RDS/Aurora need them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from common.errors import AccessDenied, ConnectionProblem

ROLE_SESSION_NAME = "pteleport-db-agent"

# Advice for when the *database* rejects a token (generating one never checks permissions).
IAM_POLICY_HINT = (
    'the IAM identity of the database service needs "rds-db:connect" on '
    '"arn:aws:rds-db:<region>:<account>:dbuser:<resource id>/<db user>"'
)

# A callable with the signature of ``boto3.session.Session`` (keyword arguments
# ``region_name``, ``aws_access_key_id``, ``aws_secret_access_key``, ``aws_session_token``).
SessionFactory = Callable[..., Any]

# STS is the only call that leaves the host: keep a black-holed endpoint from holding a
# client's connection for minutes (botocore's defaults are 60 s timeouts and 5 attempts).
_STS_CONFIG = {"connect_timeout": 5, "read_timeout": 10, "retries": {"max_attempts": 3, "mode": "standard"}}

_ACCESS_DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException"})
_ROLE_ARN = re.compile(r"^arn:(aws[a-z-]*):iam::(\d{12}):role/(?:[\w+=,.@-]+/)*([\w+=,.@-]+)$")
_ASSUMED_ROLE_ARN = re.compile(r"^arn:(aws[a-z-]*):sts::(\d{12}):assumed-role/([\w+=,.@-]+)/[^/]+$")
_CALLER_IN_MESSAGE = re.compile(r"User: (arn:\S+) is not authorized")
OWN_IDENTITY = "the database service's own IAM identity"


def role_chain(db_user: str, assume_role_arn: str | None, external_id: str | None) -> list[tuple[str, str | None]]:
    """The roles to assume in order, each with its external ID: ``assume_role_arn``, then the db user's role."""
    chain: list[tuple[str, str | None]] = []
    if assume_role_arn:
        chain.append((assume_role_arn, external_id or None))
    if _ROLE_ARN.match(db_user):
        chain.append((db_user, None))
    return chain


def postgres_user(db_user: str) -> str:
    """The PostgreSQL user a db user names: an IAM role ARN's role name, else the db user itself."""
    found = _ROLE_ARN.match(db_user)
    return found.group(3) if found else db_user


def principal_role(arn: str) -> str:
    """The role ARN for a trust policy Principal (an assumed-role session ARN becomes its role's ARN)."""
    found = _ASSUMED_ROLE_ARN.match(arn)
    return f"arn:{found.group(1)}:iam::{found.group(2)}:role/{found.group(3)}" if found else arn


def trust_statement(principal: str, external_id: bool) -> str:
    """The trust policy statement that lets ``principal`` assume a role (with the external ID condition)."""
    statement: dict[str, Any] = {"Effect": "Allow", "Principal": {"AWS": principal}, "Action": "sts:AssumeRole"}
    if external_id:
        statement["Condition"] = {"StringEquals": {"sts:ExternalId": "<aws.external_id of this database>"}}
    return json.dumps(statement)


def rds_auth_token(
    host: str,
    port: int,
    db_user: str,
    region: str,
    assume_role_arn: str | None = None,
    external_id: str | None = None,
    *,
    session_factory: SessionFactory | None = None,
) -> str:
    """The IAM auth token (valid 15 minutes) for ``db_user`` at ``host:port`` in ``region``.

    ``session_factory`` replaces ``boto3.session.Session`` (tests use it to stub STS).
    """
    from botocore.exceptions import BotoCoreError

    if session_factory is None:
        import boto3

        session_factory = boto3.session.Session
    try:
        session = session_factory(region_name=region)
        caller: str | None = None  # the previous link's role; None: the service's own identity
        for role_arn, role_external_id in role_chain(db_user, assume_role_arn, external_id):
            session = _assume_role(session, session_factory, region, role_arn, role_external_id, caller)
            caller = role_arn
        client = session.client("rds", region_name=region)
        return client.generate_db_auth_token(
            DBHostname=host, Port=port, DBUsername=postgres_user(db_user), Region=region
        )
    except _credential_errors() as exc:
        raise _no_credentials(exc) from None
    except BotoCoreError as exc:
        raise ConnectionProblem(
            f"could not generate the RDS IAM auth token for {db_user}@{host}:{port} in {region}: {exc}",
            detail=repr(exc),
        ) from None


def _assume_role(
    session: Any,
    session_factory: SessionFactory,
    region: str,
    role_arn: str,
    external_id: str | None,
    caller: str | None = None,
) -> Any:
    """A session holding the temporary credentials of ``role_arn``, assumed with ``session``.

    ``caller`` is the role ``session`` holds (None: the service's own identity), for the advice
    when STS refuses.
    """
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    sts = session.client("sts", region_name=region, config=Config(**_STS_CONFIG))
    params = {"RoleArn": role_arn, "RoleSessionName": ROLE_SESSION_NAME}
    if external_id:
        params["ExternalId"] = external_id
    try:
        creds = sts.assume_role(**params)["Credentials"]
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "Unknown"), error.get("Message", "")
        if code in _ACCESS_DENIED_CODES:
            raise _refused(role_arn, caller, message, external_id is not None, code) from None
        raise ConnectionProblem(
            f"assuming IAM role {role_arn} through AWS STS in {region} failed ({code}: {message})",
            detail=str(exc),
        ) from None
    except _credential_errors() as exc:
        raise _no_credentials(exc) from None
    except BotoCoreError as exc:
        raise ConnectionProblem(
            f"assuming IAM role {role_arn} through AWS STS in {region} failed: {exc}", detail=repr(exc)
        ) from None
    return session_factory(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        region_name=region,
    )


def _refused(role_arn: str, caller: str | None, message: str, external_id: bool, code: str) -> AccessDenied:
    """STS refused AssumeRole: who could not assume what, and the trust policy statement to add."""
    seen = _CALLER_IN_MESSAGE.search(message)
    if caller is not None:
        who, principal = f"IAM role {caller}", principal_role(caller)
    elif seen:
        who, principal = f"{OWN_IDENTITY} ({seen.group(1)})", principal_role(seen.group(1))
    else:
        who, principal = OWN_IDENTITY, "<the database service's IAM role ARN>"
    with_external_id = " with the external ID configured for this database" if external_id else ""
    return AccessDenied(
        f"{who} may not assume IAM role {role_arn}{with_external_id}: add this statement to the trust"
        f" relationship (trust policy) of {role_arn}: {trust_statement(principal, external_id)}",
        detail=f"{code}: {message}",
    )


def _credential_errors() -> tuple[type[Exception], ...]:
    """botocore's errors that mean "the credential chain gave nothing usable"."""
    from botocore.exceptions import (
        CredentialRetrievalError,
        NoCredentialsError,
        PartialCredentialsError,
        SSOError,
        TokenRetrievalError,
    )

    return (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError, TokenRetrievalError, SSOError)


def _no_credentials(exc: Exception) -> AccessDenied:
    return AccessDenied(
        "no AWS credentials available to the database service: give its host an IAM role "
        "(instance profile, ECS task role or IRSA) or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
        "in its environment",
        detail=f"{type(exc).__name__}: {exc}",
    )
