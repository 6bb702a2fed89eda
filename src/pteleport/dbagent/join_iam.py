"""The agent's side of IAM joining: a challenge-signed ``sts:GetCallerIdentity`` request.

The agent never sends AWS credentials. It signs, with its own (boto3's usual chain:
environment, shared config, instance profile, ECS task role, IRSA), a GetCallerIdentity POST
to its region's STS host that carries the cluster's challenge in ``X-Teleport-Challenge``
(SigV4 signs every header, that one included), and sends auth the signed request: method,
URL, headers and body. Auth forwards it to STS, which answers with who signed it.

Signing is local (no network). boto3 is imported here only, when the agent joins by IAM.
"""

from __future__ import annotations

import os
from typing import Any

from common.errors import AccessDenied

BODY = "Action=GetCallerIdentity&Version=2011-06-15"
DEFAULT_REGION = "us-east-1"


def sts_host(region: str) -> str:
    return f"sts.{region}.amazonaws.com" + (".cn" if region.startswith("cn-") else "")


def signed_identity_request(challenge: str, region: str | None = None) -> dict[str, Any]:
    """The GetCallerIdentity request signed with this host's AWS credentials, challenge included."""
    import boto3
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    session = boto3.session.Session()
    # AWS_REGION is what ECS, EKS and Lambda set; botocore itself reads AWS_DEFAULT_REGION.
    region = region or session.region_name or os.environ.get("AWS_REGION") or DEFAULT_REGION
    credentials = session.get_credentials()
    if credentials is None:
        raise AccessDenied(
            "no AWS credentials available to the database service for IAM joining: give its host an IAM role"
            " (instance profile, ECS task role or IRSA) or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    url = f"https://{sts_host(region)}/"
    request = AWSRequest(
        method="POST",
        url=url,
        data=BODY,
        headers={
            "Accept": "application/json",
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            "X-Teleport-Challenge": challenge,
        },
    )
    SigV4Auth(credentials.get_frozen_credentials(), "sts", region).add_auth(request)
    headers = {k: v for k, v in request.headers.items()}
    headers["Host"] = sts_host(region)
    return {"method": "POST", "url": url, "headers": headers, "body": BODY}
