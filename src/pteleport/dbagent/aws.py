"""RDS/Aurora IAM authentication: the auth token the agent sends as the password.

``generate_db_auth_token`` presigns an ``rds-db:connect`` URL locally with SigV4 (no network);
with ``assume_role_arn`` the agent first assumes that role through STS (with the external
id when set). Failures become sentences that name the fix.
"""

from __future__ import annotations

from typing import Any

from common.errors import AccessDenied, ConnectionProblem

IAM_POLICY_HINT = (
    'the IAM identity of the database service needs "rds-db:connect" on '
    '"arn:aws:rds-db:<region>:<account>:dbuser:<resource id>/<db user>"'
)


def _session(region: str, assume_role_arn: str | None, external_id: str | None) -> Any:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    session = boto3.session.Session(region_name=region)
    if not assume_role_arn:
        return session
    sts = session.client("sts", region_name=region)
    kwargs = {"RoleArn": assume_role_arn, "RoleSessionName": "pteleport-db-agent"}
    if external_id:
        kwargs["ExternalId"] = external_id
    try:
        creds = sts.assume_role(**kwargs)["Credentials"]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("AccessDenied", "AccessDeniedException"):
            raise AccessDenied(
                f"the database service may not assume role {assume_role_arn}: check that role's trust "
                "relationship allows the service's own IAM identity" + (" with this external ID" if external_id else "")
            ) from None
        raise ConnectionProblem(f"assuming role {assume_role_arn} failed: {exc}") from None
    except BotoCoreError as exc:
        raise _no_credentials(exc) from None
    return boto3.session.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        region_name=region,
    )


def _no_credentials(exc: Exception) -> AccessDenied:
    return AccessDenied(
        "no AWS credentials available to the database service: give its host an IAM role "
        "(instance profile, ECS task role, IRSA) or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        f" ({type(exc).__name__})"
    )


def rds_auth_token(
    host: str, port: int, db_user: str, region: str, assume_role_arn: str | None = None, external_id: str | None = None
) -> str:
    """The IAM auth token (valid 15 minutes) for ``db_user`` at ``host:port``."""
    from botocore.exceptions import BotoCoreError, NoCredentialsError

    try:
        session = _session(region, assume_role_arn, external_id)
        client = session.client("rds", region_name=region)
        return client.generate_db_auth_token(DBHostname=host, Port=port, DBUsername=db_user, Region=region)
    except (NoCredentialsError, BotoCoreError) as exc:
        if isinstance(exc, NoCredentialsError) or "credential" in str(exc).lower():
            raise _no_credentials(exc) from None
        raise ConnectionProblem(f"could not generate the RDS IAM auth token: {exc}; {IAM_POLICY_HINT}") from None
