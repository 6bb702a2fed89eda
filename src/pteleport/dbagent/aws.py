"""RDS/Aurora IAM authentication: the auth token the agent sends as the password.

``generate_db_auth_token`` presigns an ``rds-db:connect`` URL locally with SigV4 (no network,
valid 15 minutes) from the service's ambient AWS credentials (environment, shared config,
instance profile, ECS task role, IRSA). With ``assume_role_arn`` the agent first assumes that
role through STS (with the external ID when set) and signs with the temporary credentials, so
the token carries ``X-Amz-Security-Token``.

Failures become one-sentence errors that name the fix:

* no usable credentials -> ``AccessDenied`` ("no AWS credentials available to the database
  service: ...");
* STS refuses AssumeRole -> ``AccessDenied`` naming the role and its trust relationship;
* any other STS or botocore failure -> ``ConnectionProblem`` naming what failed.

boto3/botocore are imported inside the functions: they cost ~150 ms at start-up and only
agents serving RDS/Aurora need them.
"""

from __future__ import annotations

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
        if assume_role_arn:
            session = _assume_role(session, session_factory, region, assume_role_arn, external_id)
        client = session.client("rds", region_name=region)
        return client.generate_db_auth_token(DBHostname=host, Port=port, DBUsername=db_user, Region=region)
    except _credential_errors() as exc:
        raise _no_credentials(exc) from None
    except BotoCoreError as exc:
        raise ConnectionProblem(
            f"could not generate the RDS IAM auth token for {db_user}@{host}:{port} in {region}: {exc}",
            detail=repr(exc),
        ) from None


def _assume_role(
    session: Any, session_factory: SessionFactory, region: str, role_arn: str, external_id: str | None
) -> Any:
    """A session holding the temporary credentials of ``role_arn``, assumed with ``session``."""
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
            with_external_id = " with the external ID configured for this database" if external_id else ""
            raise AccessDenied(
                f"the database service may not assume IAM role {role_arn}: check that role's trust relationship "
                f"allows the service's own IAM identity to assume it{with_external_id}",
                detail=f"{code}: {message}",
            ) from None
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
