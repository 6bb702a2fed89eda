"""`pctl tokens add | ls | rm`: join tokens for database agents (tctl tokens).

The cluster keeps only a token's hash: its value is printed once, by ``add``; ``ls``
shows each token's public id (the first 16 hex digits of the hash), and ``rm`` takes the
value or the id.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from common.cli import render
from pctl.output import (
    Fmt,
    OptionalFormatOpt,
    expiry_text,
    labels_text,
    parse_labels,
    parse_time,
    safe_table,
    split_list,
)

tokens_app = typer.Typer(help="List, add and remove join tokens.", no_args_is_help=True)

DB_TEMPLATE = """The invite token: {token}
This token will expire in {minutes} minutes.
It is shown only now: the cluster keeps its hash, and pctl tokens ls lists it as {id}.

1. Give PostgreSQL a server certificate from the cluster's db CA (RDS and Aurora: skip this
   step, and pass --aws-region instead of --ca-cert-file below):

> pctl auth sign --format=db --host={host} --out=server --ttl=2190h

   Copy server.crt, server.key and server.cas to the database's host; in postgresql.conf set
   ssl = on, ssl_cert_file, ssl_key_file and ssl_ca_file (server.cas) to them, and let users in
   with a client certificate in pg_hba.conf: hostssl all all 0.0.0.0/0 cert.

2. Generate the configuration and start a pteleport agent using it:

> pteleport db configure create \\
   --token={token} \\
{pins}   --proxy={proxy} \\
   --name={name} \\
   --protocol={protocol} \\
   --uri={uri} \\
   --ca-cert-file=server.cas \\
   --output file:///etc/pteleport.yaml

> pteleport start -c /etc/pteleport.yaml

Please note:

  - This invitation token will expire in {minutes} minutes.
  - Database address {uri} must be reachable from the new database
    service.
{scope_note}"""

SCOPED_NOTE = """  - This token is scoped: an agent that joins with it may serve only
    {scope}.
"""
UNSCOPED_NOTE = """  - This token is not scoped: an agent that joins with it may serve any
    database (as in Teleport). Pass --db-name and/or --labels to limit it.
"""

OTHER_TEMPLATE = """The invite token: {token}
This token will expire in {minutes} minutes.
It is shown only now: the cluster keeps its hash, and pctl tokens ls lists it as {id}.

Run this on the new {roles} service to join the cluster:

> pteleport start \\
   --roles={roles} \\
   --token={token} \\
{pins}   --auth-server={proxy}

Please note:

  - This invitation token will expire in {minutes} minutes.
  - {proxy} must be reachable from the new service.
"""


IAM_TEMPLATE = """The IAM join token: {token}
This token will expire in {minutes} minutes. Its name is not a secret: agents on AWS join by
signing a challenge with their own IAM identity, which must match {rules}.

In the database service's config file:

  teleport:
    join_params:
      join_method: iam
      token_name: {token}
"""


def _allow_rules(join_method: str, accounts: list[str], arns: list[str]) -> list[dict[str, str]]:
    """--allow-aws-account/--allow-aws-arn as allow rules: one per account (each with every ARN), or one per ARN."""
    from common.errors import UsageError

    if join_method not in ("token", "iam"):
        raise UsageError(f'--join-method must be token or iam (got "{join_method}")')
    if join_method == "token":
        if accounts or arns:
            raise UsageError("--allow-aws-account and --allow-aws-arn are for IAM tokens: add --join-method=iam")
        return []
    if not accounts and not arns:
        raise UsageError("an IAM token needs --allow-aws-account=ACCOUNT (12 digits), and optionally --allow-aws-arn")
    if not accounts:
        return [{"aws_arn": arn} for arn in arns]
    return [{"aws_account": a, **({"aws_arn": arn} if arn else {})} for a in accounts for arn in (arns or [""])]


@tokens_app.command("add")
def add(
    type_: Annotated[str, typer.Option("--type", help="Token type(s), e.g. db (comma-separated).")],
    ttl: Annotated[str, typer.Option("--ttl", help="How long the token is valid (30m, 1h, ...).")] = "30m",
    value: Annotated[
        str | None,
        typer.Option("--value", help="Use this token value (16 characters or more) instead of a random one."),
    ] = None,
    labels: Annotated[
        str | None, typer.Option("--labels", help="Scope: agents may serve only databases with these labels (k=v,...).")
    ] = None,
    db_name: Annotated[
        str | None, typer.Option("--db-name", help="Scope: agents may serve only these databases (comma-separated).")
    ] = None,
    db_protocol: Annotated[str | None, typer.Option("--db-protocol", help="Database protocol (postgres).")] = None,
    db_uri: Annotated[str | None, typer.Option("--db-uri", help="Database address HOST:PORT.")] = None,
    join_method: Annotated[
        str, typer.Option("--join-method", help="token (a secret, default) or iam (agents on AWS prove their IAM identity).")
    ] = "token",
    allow_aws_account: Annotated[
        list[str] | None, typer.Option("--allow-aws-account", help="IAM tokens: an AWS account (12 digits) that may join.")
    ] = None,
    allow_aws_arn: Annotated[
        list[str] | None,
        typer.Option("--allow-aws-arn", help="IAM tokens: an ARN glob that may join (with * and ?), e.g. a role's sessions."),
    ] = None,
    fmt: OptionalFormatOpt = None,
) -> None:
    """Create a join token and print its value, the only time it is shown (--format=text prints only the token)."""
    from common.cli import flag_duration
    from pctl.connect import client

    delta = flag_duration(ttl, "--ttl", example="30m")
    types = split_list(type_)
    db_names = split_list(db_name)
    allow = _allow_rules(join_method, allow_aws_account or [], allow_aws_arn or [])
    body = {
        "types": types,
        "ttl_seconds": int(delta.total_seconds()),
        "value": value,
        "labels": parse_labels(labels) or None,
        "db_names": db_names or None,
        "join_method": join_method,
        "allow": allow or None,
    }
    with client() as api:
        answer = api.post("/v1/tokens", body)
    doc = answer["token"]
    token = doc["metadata"]["name"]  # in this answer only, the value
    if fmt == Fmt.text:
        print(token)
        return
    scope = doc["spec"].get("db_scope")
    if fmt in (Fmt.json, Fmt.yaml):
        render(
            {
                "token": token,
                "id": answer.get("id"),
                "roles": doc["spec"]["roles"],
                "expires": doc["metadata"].get("expires"),
                "scope": scope,
            },
            fmt,
        )
        return
    minutes = f"{delta.total_seconds() / 60:g}"
    if join_method == "iam":
        rules = ", ".join(
            " ".join(f"{k}={v}" for k, v in rule.items()) for rule in doc["spec"].get("allow") or []
        )
        print(IAM_TEMPLATE.format(token=token, minutes=minutes, rules=rules), end="")
        return
    pins = "".join(f"   --ca-pin={pin} \\\n" for pin in answer.get("ca_pins") or [answer.get("ca_pin", "")])
    roles = [r.lower() for r in doc["spec"]["roles"]]
    if "db" in roles:
        print(
            DB_TEMPLATE.format(
                token=token,
                id=answer.get("id", ""),
                minutes=minutes,
                pins=pins,
                proxy=answer.get("proxy", ""),
                name=db_names[0] if db_names else "example",
                protocol=db_protocol or "postgres",
                uri=db_uri or "example.db:5432",
                host=(db_uri or "example.db:5432").rpartition(":")[0].strip("[]") or "example.db",
                scope_note=SCOPED_NOTE.format(scope=_scope_words(scope)) if scope else UNSCOPED_NOTE,
            ),
            end="",
        )
    else:
        print(
            OTHER_TEMPLATE.format(
                token=token,
                id=answer.get("id", ""),
                minutes=minutes,
                pins=pins,
                proxy=answer.get("proxy", ""),
                roles=",".join(roles),
            ),
            end="",
        )


def _scope_words(scope: dict[str, Any]) -> str:
    parts = []
    if scope.get("db_names"):
        parts.append("the database(s) " + ", ".join(scope["db_names"]))
    if scope.get("db_labels"):
        labels = ",".join(f"{k}={'|'.join(v)}" for k, v in sorted(scope["db_labels"].items()))
        parts.append(f"databases labelled {labels}")
    return " and only while labelled ".join([parts[0], parts[1].removeprefix("databases labelled ")]) if len(parts) == 2 else parts[0]


def _token_labels(doc: dict[str, Any]) -> str:
    merged = dict(doc.get("metadata", {}).get("labels") or {})
    merged.update(doc.get("spec", {}).get("suggested_labels") or {})
    return labels_text(merged)


def tokens_table(docs: list[dict[str, Any]]) -> str:
    if not docs:
        return "No active tokens found."
    rows = [
        [
            d["metadata"]["name"],
            ",".join(d.get("spec", {}).get("roles", [])),
            _token_labels(d),
            expiry_text(d["metadata"].get("expires")),
        ]
        for d in docs
    ]
    return safe_table(["Token ID", "Type", "Labels", "Expiry Time (UTC)"], rows)


def _by_expiry(doc: dict[str, Any]) -> float:
    when = parse_time(doc.get("metadata", {}).get("expires"))
    return when.timestamp() if when else float("inf")


@tokens_app.command("ls")
def ls(fmt: OptionalFormatOpt = None) -> None:
    """List join tokens by id; their values are never shown again (--format=text prints only the ids)."""
    from pctl.connect import client

    with client() as api:
        docs = sorted(api.get("/v1/tokens"), key=_by_expiry)
    if fmt is None:
        render(docs, Fmt.text, tokens_table)
    elif fmt == Fmt.text:
        render(docs, fmt, lambda ds: "\n".join(d["metadata"]["name"] for d in ds) or "No active tokens found.")
    else:
        render(docs, fmt)


@tokens_app.command("rm")
def rm(
    token: Annotated[str, typer.Argument(help="The token to delete: its value or its id (pctl tokens ls).")],
) -> None:
    """Delete (revoke) a join token."""
    from pctl.connect import client

    with client() as api:
        api.delete(f"/v1/tokens/{_quote(token)}")
    print(f"Token {token} has been deleted")


def _quote(part: str) -> str:
    from urllib.parse import quote

    return quote(part, safe="")
