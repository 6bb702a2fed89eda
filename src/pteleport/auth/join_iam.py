"""IAM joining: an agent on AWS proves its IAM identity instead of presenting a secret.

The protocol (Teleport's ``join_iam``):

1. The agent asks for a challenge; auth stores 32 random bytes (base64) for one minute.
2. The agent signs, with its own AWS credentials, an ``sts:GetCallerIdentity`` request whose
   headers include ``X-Teleport-Challenge: <challenge>``, and sends the signed request (not
   the credentials) with the token's name.
3. Auth consumes the challenge (a second use is refused), checks the request's shape (POST
   to an AWS STS host over https, the exact GetCallerIdentity body, ``Accept:
   application/json``, the challenge header present and among the SigV4 signed headers),
   sends it to STS itself, and matches the returned ``Account`` and ``Arn`` against the
   token's ``spec.allow`` rules (ARN globs with ``*`` and ``?``).
4. A match joins like a secret token (``TokenService.admit``): auth assigns the host id and
   binds the token's scope. Failures are throttled and audited per address like wrong
   secrets.

Only real STS hosts count (``sts.amazonaws.com``, ``sts[-fips].<region>.amazonaws.com``,
and the China partition). ``sts_override`` (auth_service.iam_join.sts_endpoint_override,
refused at start-up outside test mode) changes only where auth sends the request; the
request must still name an STS host.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from common.errors import AccessDenied, BadParameter, ConnectionProblem, LimitExceeded, NotFound, NotLoggedIn
from common.tls import load_public_key
from pteleport.auth.context import AuthContext
from pteleport.auth.throttle import FailureLimiter, client_ip
from pteleport.auth.tokens import TokenService, is_iam
from pteleport.services.store import JsonStore

CHALLENGE_TTL = timedelta(minutes=1)
CHALLENGES_PER_MINUTE = 30  # per address: each challenge is a stored item, so a flood is bounded
CHALLENGE_HEADER = "x-teleport-challenge"
STS_BODY = {"Action": "GetCallerIdentity", "Version": "2011-06-15"}
STS_HOST = re.compile(r"^sts(-fips)?(\.[a-z]{2}(-gov)?-[a-z]+-\d)?\.amazonaws\.com(\.cn)?$")
STS_TIMEOUT = 10.0


def allowed_sts_host(host: str) -> bool:
    """Whether ``host`` is an AWS STS endpoint (global, regional, FIPS or China)."""
    return bool(STS_HOST.fullmatch(host.lower()))


def arn_matches(pattern: str, arn: str) -> bool:
    """An ARN glob: ``*`` any run of characters, ``?`` one character, the rest literal."""
    regex = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.fullmatch(regex, arn) is not None


def matching_rule(allow: list[dict], account: str, arn: str) -> dict | None:
    for rule in allow:
        if rule.get("aws_account") and rule["aws_account"] != account:
            continue
        if rule.get("aws_arn") and not arn_matches(rule["aws_arn"], arn):
            continue
        return rule
    return None


class IamJoinService:
    def __init__(self, ctx: AuthContext, tokens: TokenService, sts_override: str | None = None) -> None:
        self.ctx = ctx
        self.tokens = tokens
        self.sts_override = sts_override
        self.challenges = JsonStore(ctx.backend, "iam_join_challenges")
        self.issued = FailureLimiter(ctx.clock, max_failures=CHALLENGES_PER_MINUTE)

    def challenge(self, remote: str) -> str:
        """A fresh single-use challenge (throttled like a join: guessers get nothing here either)."""
        self.tokens.guard.check(remote, {"role": "Db", "success": False, "addr.remote": remote, "method": "iam"})
        ip = client_ip(remote)
        wait = self.issued.retry_after(ip)
        if wait:
            raise LimitExceeded(
                f"too many IAM join challenges from this address; try again in {wait} s", retry_after=wait
            )
        self.issued.failed(ip)  # counted like a failure: at most CHALLENGES_PER_MINUTE a minute
        value = base64.b64encode(secrets.token_bytes(32)).decode()
        expires = self.ctx.clock() + CHALLENGE_TTL
        self.challenges.create(_key(value), {"expires": expires.isoformat()}, expires=expires)
        return value

    def join(
        self, name: str, role: str, hostname: str, public_key_pem: str, challenge: str, request: dict, remote: str
    ) -> tuple[bytes, str]:
        key = load_public_key(public_key_pem)
        failure = {"role": role, "success": False, "addr.remote": remote, "method": "iam", "token": name}
        guard = self.tokens.guard
        guard.check(remote, failure)
        try:
            doc = self.tokens.find(name)
            if not is_iam(doc):
                raise AccessDenied(
                    f'token "{name}" is not an IAM join token; create one with "pctl tokens add --type=db'
                    ' --join-method=iam --allow-aws-account=ACCOUNT"'
                )
            self._consume(challenge)
            url, headers, body = _check_shape(request, challenge)
            account, arn = self._ask_sts(url, headers, body)
            rule = matching_rule(doc["spec"].get("allow") or [], account, arn)
            if rule is None:
                raise AccessDenied(
                    f'AWS identity {arn} (account {account}) is not allowed by IAM token "{name}"; add an allow'
                    f" rule for it (aws_account: {account}, aws_arn: a glob matching {arn})"
                )
        except (AccessDenied, NotLoggedIn, BadParameter) as exc:
            guard.failed(remote, {**failure, "error": str(exc)})
            if isinstance(exc, BadParameter):
                raise AccessDenied(f"the IAM join request was refused: {exc.message}") from None
            raise
        return self.tokens.admit(doc, role, None, hostname, key, remote, "iam", aws_account=account, aws_arn=arn)

    def _consume(self, challenge: str) -> None:
        try:
            doc = self.challenges.get(_key(challenge))
            self.challenges.delete(_key(challenge))
        except NotFound:
            raise AccessDenied(
                "the IAM join challenge is unknown, expired or already used; ask for a new one (each join signs"
                " a fresh challenge)"
            ) from None
        if datetime.fromisoformat(doc["expires"]) <= self.ctx.clock():
            raise AccessDenied("the IAM join challenge expired; ask for a new one and sign it within a minute")

    def _ask_sts(self, url: str, headers: dict[str, str], body: str) -> tuple[str, str]:
        """Send the signed request to STS (or the test override) and read Account and Arn."""
        import httpx

        target = url
        if self.sts_override:
            target = self.sts_override.rstrip("/") + "/"
        try:
            with httpx.Client(timeout=STS_TIMEOUT, follow_redirects=False) as http:
                response = http.post(target, headers=headers, content=body.encode())
        except httpx.HTTPError as exc:
            raise ConnectionProblem(f"auth could not reach AWS STS at {target} to check an IAM join ({exc})") from None
        if response.status_code != 200:
            raise AccessDenied(
                f"AWS STS did not accept the signed identity request ({_sts_error(response.text)}); check the"
                " database service's AWS credentials and its clock"
            )
        try:
            result = json.loads(response.text)["GetCallerIdentityResponse"]["GetCallerIdentityResult"]
            return str(result["Account"]), str(result["Arn"])
        except (ValueError, KeyError, TypeError):
            raise AccessDenied("AWS STS answered the identity request with something unreadable") from None


def _key(challenge: str) -> str:
    return hashlib.sha256(challenge.encode()).hexdigest()


def _check_shape(request: Any, challenge: str) -> tuple[str, dict[str, str], str]:
    """The signed request's URL, headers and body, if it is exactly a challenge-signed GetCallerIdentity."""
    if not isinstance(request, dict):
        raise BadParameter("the signed request must be {method, url, headers, body}")
    method, url, headers, body = (request.get(k) for k in ("method", "url", "headers", "body"))
    if method != "POST" or not isinstance(url, str) or not isinstance(body, str) or not isinstance(headers, dict):
        raise BadParameter("the signed request must be a POST with a url, headers and a body")
    parts = urlsplit(url)
    if parts.scheme != "https" or parts.port not in (None, 443) or parts.path not in ("", "/") or parts.query:
        raise BadParameter(f"{url} is not an AWS STS endpoint (https://sts.REGION.amazonaws.com/)")
    host = parts.hostname or ""
    if not allowed_sts_host(host):
        raise BadParameter(f"{host} is not an AWS STS host; only sts.amazonaws.com and its regional hosts count")
    lower = {str(k).lower(): str(v) for k, v in headers.items()}
    if lower.get("host", host) != host:
        raise BadParameter("the signed request's Host header does not match its URL")
    if dict(parse_qsl(body, keep_blank_values=True)) != STS_BODY:
        raise BadParameter(
            "the signed request is not exactly sts:GetCallerIdentity (Action=GetCallerIdentity&Version=2011-06-15)"
        )
    if "application/json" not in lower.get("accept", ""):
        raise BadParameter("the signed request must ask for JSON (Accept: application/json)")
    if not secrets.compare_digest(lower.get(CHALLENGE_HEADER, ""), challenge):
        raise BadParameter("the signed request does not carry this join's challenge (X-Teleport-Challenge)")
    auth = lower.get("authorization", "")
    signed = re.search(r"SignedHeaders=([^,\s]+)", auth)
    if not auth.startswith("AWS4-HMAC-SHA256 ") or signed is None:
        raise BadParameter("the signed request has no SigV4 Authorization header")
    if CHALLENGE_HEADER not in signed.group(1).split(";"):
        raise BadParameter("the challenge header is not among the signed headers")
    out = {k: v for k, v in headers.items() if str(k).lower() not in ("content-length", "connection", "host")}
    out["Host"] = host
    return url, out, body


def _sts_error(text: str) -> str:
    found = re.search(r"<Code>([^<]+)</Code>", text)
    if found:
        return found.group(1)
    try:
        return str(json.loads(text)["Error"]["Code"])
    except (ValueError, KeyError, TypeError):
        return "no reason given"
