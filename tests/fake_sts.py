"""A fake AWS STS on localhost that checks SigV4 signatures the way AWS does.

AWS cannot exist here, so this is the one fake of the AWS tests. It knows a set of access
keys (fixed long-term keys, and the temporary ones it hands out from AssumeRole), and for
every request it recomputes the SigV4 signature from the key's secret, independently of
botocore: canonical request, string to sign, HMAC-SHA256 key chain. A request whose
signature, date, scope or session token is wrong gets AWS's 403 ``SignatureDoesNotMatch``
(or ``InvalidClientTokenId`` for an unknown key) and is recorded as refused.

* ``AssumeRole``: the role must exist and its trust policy must name the caller (the role ARN
  behind the signing key's identity) and, when set, the external ID; else 403 AccessDenied
  with AWS's message "User: <caller> is not authorized to perform: sts:AssumeRole on resource:
  <role>". A granted call returns new temporary credentials whose identity is
  ``arn:aws:sts::<account>:assumed-role/<name>/<session name>``.
* ``GetCallerIdentity``: the signing key's Account, Arn and UserId, as XML or, with
  ``Accept: application/json``, as JSON (what the IAM join sends).

``requests`` records every request: action, parameters, the signing key and whether the
signature verified, and the signed header names, so tests assert what was sent to STS.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote

AMZ_DATE = "%Y%m%dT%H%M%SZ"
ALLOWED_SKEW = timedelta(minutes=15)


@dataclass
class Key:
    access_key: str
    secret_key: str
    arn: str  # the identity the key signs as
    session_token: str | None = None

    @property
    def account(self) -> str:
        return self.arn.split(":")[4]


@dataclass
class Role:
    arn: str
    trusted: list[str]  # role/user ARNs allowed to assume it
    external_id: str | None = None

    @property
    def name(self) -> str:
        return self.arn.rsplit("/", 1)[-1]


@dataclass
class Seen:
    action: str
    params: dict[str, str]
    access_key: str
    verified: bool
    signed_headers: list[str]
    headers: dict[str, str]
    outcome: str = ""


@dataclass
class FakeSTS:
    keys: dict[str, Key] = field(default_factory=dict)
    roles: dict[str, Role] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    region: str = "us-east-1"
    _server: ThreadingHTTPServer | None = None

    # --- set-up ---------------------------------------------------------------------------
    def add_key(self, access_key: str, secret_key: str, arn: str) -> Key:
        key = Key(access_key, secret_key, arn)
        self.keys[access_key] = key
        return key

    def add_role(self, arn: str, trusted: list[str], external_id: str | None = None) -> Role:
        role = Role(arn, trusted, external_id)
        self.roles[arn] = role
        return role

    def start(self) -> FakeSTS:
        sts = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                status, payload, ctype = sts.handle("POST", self.path, dict(self.headers.items()), body)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # --- requests -------------------------------------------------------------------------
    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes, str]:
        lower = {k.lower(): v for k, v in headers.items()}
        params = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        action = params.get("Action", "")
        key, verified, signed = self.verify(method, path, lower, body)
        seen = Seen(action, params, key.access_key if key else "", verified, signed, lower)
        self.requests.append(seen)
        as_json = "application/json" in lower.get("accept", "")
        if key is None:
            seen.outcome = "InvalidClientTokenId"
            return self._error(403, "InvalidClientTokenId", "The security token included in the request is invalid.")
        if not verified:
            seen.outcome = "SignatureDoesNotMatch"
            return self._error(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        if action == "GetCallerIdentity":
            seen.outcome = "ok"
            user_id = key.access_key
            if as_json:
                doc = {
                    "GetCallerIdentityResponse": {
                        "GetCallerIdentityResult": {"Account": key.account, "Arn": key.arn, "UserId": user_id},
                        "ResponseMetadata": {"RequestId": "fake"},
                    }
                }
                return 200, json.dumps(doc).encode(), "application/json"
            xml = (
                '<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><GetCallerIdentityResult>'
                f"<Arn>{key.arn}</Arn><UserId>{user_id}</UserId><Account>{key.account}</Account>"
                "</GetCallerIdentityResult><ResponseMetadata><RequestId>fake</RequestId></ResponseMetadata>"
                "</GetCallerIdentityResponse>"
            )
            return 200, xml.encode(), "text/xml"
        if action == "AssumeRole":
            return self._assume(key, params, seen)
        seen.outcome = "InvalidAction"
        return self._error(400, "InvalidAction", f"Could not find operation {action}")

    def _assume(self, key: Key, params: dict[str, str], seen: Seen) -> tuple[int, bytes, str]:
        role = self.roles.get(params.get("RoleArn", ""))
        caller = principal_of(key.arn)
        if (
            role is None
            or caller not in role.trusted
            or (role.external_id and params.get("ExternalId") != role.external_id)
        ):
            seen.outcome = "AccessDenied"
            return self._error(
                403,
                "AccessDenied",
                f"User: {key.arn} is not authorized to perform: sts:AssumeRole on resource: {params.get('RoleArn')}",
            )
        session_name = params.get("RoleSessionName", "")
        account = role.arn.split(":")[4]
        new = Key(
            "ASIA" + secrets.token_hex(8).upper(),
            secrets.token_urlsafe(30),
            f"arn:aws:sts::{account}:assumed-role/{role.name}/{session_name}",
            session_token="FQoGZXIvYXdzE" + secrets.token_urlsafe(60),
        )
        self.keys[new.access_key] = new
        seen.outcome = "ok"
        expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        xml = (
            '<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>'
            f"<Credentials><AccessKeyId>{new.access_key}</AccessKeyId><SecretAccessKey>{new.secret_key}"
            f"</SecretAccessKey><SessionToken>{new.session_token}</SessionToken><Expiration>{expires}</Expiration>"
            f"</Credentials><AssumedRoleUser><Arn>{new.arn}</Arn><AssumedRoleId>AROA:{session_name}</AssumedRoleId>"
            "</AssumedRoleUser></AssumeRoleResult><ResponseMetadata><RequestId>fake</RequestId></ResponseMetadata>"
            "</AssumeRoleResponse>"
        )
        return 200, xml.encode(), "text/xml"

    @staticmethod
    def _error(status: int, code: str, message: str) -> tuple[int, bytes, str]:
        xml = (
            '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
            f"<Code>{code}</Code><Message>{message}</Message></Error><RequestId>fake</RequestId></ErrorResponse>"
        )
        return status, xml.encode(), "text/xml"

    # --- SigV4 ----------------------------------------------------------------------------
    def verify(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[Key | None, bool, list[str]]:
        """(the signing key, whether the signature is valid, the signed header names)."""
        auth = headers.get("authorization", "")
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            return None, False, []
        fields = dict(part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 ") :].split(","))
        access_key, date, region, service, terminator = fields.get("Credential", "////").split("/")
        signed = fields.get("SignedHeaders", "").split(";")
        key = self.keys.get(access_key)
        if key is None:
            return None, False, signed
        if key.session_token is not None and headers.get("x-amz-security-token") != key.session_token:
            return key, False, signed
        amz_date = headers.get("x-amz-date", "")
        try:
            when = datetime.strptime(amz_date, AMZ_DATE).replace(tzinfo=UTC)
        except ValueError:
            return key, False, signed
        if abs(datetime.now(UTC) - when) > ALLOWED_SKEW or not amz_date.startswith(date):
            return key, False, signed
        if service != "sts" or terminator != "aws4_request" or "host" not in signed:
            return key, False, signed
        if any(name not in headers for name in signed):
            return key, False, signed
        canonical = "\n".join(
            [
                method,
                quote(path.split("?", 1)[0] or "/", safe="/~"),
                "",
                "".join(f"{name}:{' '.join(headers[name].split())}\n" for name in signed),
                ";".join(signed),
                hashlib.sha256(body).hexdigest(),
            ]
        )
        scope = f"{date}/{region}/{service}/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signing_key = _hmac(("AWS4" + key.secret_key).encode(), date)
        for part in (region, service, "aws4_request"):
            signing_key = _hmac(signing_key, part)
        expected = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
        return key, hmac.compare_digest(expected, fields.get("Signature", "")), signed


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def principal_of(arn: str) -> str:
    """An assumed-role session ARN as its role's ARN (how trust policies name a role)."""
    parts = arn.split(":")
    if len(parts) == 6 and parts[2] == "sts" and parts[5].startswith("assumed-role/"):
        name = parts[5].split("/")[1]
        return f"arn:{parts[1]}:iam::{parts[4]}:role/{name}"
    return arn
