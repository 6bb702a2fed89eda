"""Request bodies of the HTTPS API; pydantic turns bad input into a 400 naming the field."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginRequest(_Req):
    user: str = Field(min_length=1, max_length=256)
    password: str = Field(max_length=1024)
    otp_token: str = Field(default="", max_length=16)
    public_key: str = Field(max_length=4096)
    ttl_seconds: int | None = Field(default=None, gt=0)


class InviteRequest(_Req):
    password: str = Field(max_length=1024)
    otp_token: str = Field(default="", max_length=16)


class JoinRequest(_Req):
    token: str = Field(min_length=1, max_length=512)
    role: str = "Db"
    host_id: str = Field(default="", max_length=128)  # refused when set: auth assigns host ids
    hostname: str = Field(default="", max_length=253)
    public_key: str = Field(max_length=4096)


class IamJoinRequest(_Req):
    token: str = Field(min_length=1, max_length=512)  # the IAM token's name (not a secret)
    role: str = "Db"
    hostname: str = Field(default="", max_length=253)
    public_key: str = Field(max_length=4096)
    challenge: str = Field(min_length=1, max_length=128)
    request: dict[str, Any]  # the signed sts:GetCallerIdentity: method, url, headers, body


class TokenRequest(_Req):
    types: list[str]
    ttl_seconds: int | None = Field(default=None, gt=0)
    value: str | None = None
    labels: dict[str, str] | None = None
    db_names: list[str] | None = None
    join_method: str = "token"
    allow: list[dict[str, str]] | None = None  # IAM tokens: [{aws_account, aws_arn}]


class LockRequest(_Req):
    user: str | None = Field(default=None, min_length=1, max_length=256)
    role: str | None = Field(default=None, min_length=1, max_length=256)
    message: str = Field(default="", max_length=1024)
    ttl_seconds: int | None = Field(default=None, gt=0)


class ResourcesRequest(_Req):
    documents: list[Any]
    force: bool = False


class UserAddRequest(_Req):
    name: str
    roles: list[str]
    traits: dict[str, list[str]] = Field(default_factory=dict)
    ttl_seconds: int | None = Field(default=None, gt=0)


class UserUpdateRequest(_Req):
    roles: list[str] | None = None
    traits: dict[str, list[str]] = Field(default_factory=dict)


class ResetRequest(_Req):
    ttl_seconds: int | None = Field(default=None, gt=0)


class DatabaseCertRequest(_Req):
    database: str = Field(min_length=1)
    db_user: str = ""
    db_name: str = ""
    public_key: str = Field(max_length=4096)
    ttl_seconds: int | None = Field(default=None, gt=0)


class DbClientCertRequest(_Req):
    database: str = Field(min_length=1, max_length=128)
    db_user: str = Field(min_length=1)
    public_key: str = Field(max_length=4096)


class DbServerCertRequest(_Req):
    hosts: list[str]
    public_key: str = Field(max_length=4096)
    ttl_seconds: int = Field(gt=0)


class UserCertRequest(_Req):
    user: str
    public_key: str = Field(max_length=4096)
    ttl_seconds: int | None = Field(default=None, gt=0)
    database: str | None = None
    db_user: str = ""
    db_name: str = ""


class HeartbeatRequest(_Req):
    hostname: str = ""
    databases: list[dict[str, Any]]


class EventsRequest(_Req):
    events: list[dict[str, Any]] = Field(max_length=10000)


class BotAddRequest(_Req):
    name: str = Field(min_length=1, max_length=128)
    roles: list[str]
    traits: dict[str, list[str]] = Field(default_factory=dict)
    token_ttl_seconds: int | None = Field(default=None, gt=0)


class BotJoinRequest(_Req):
    token: str = Field(min_length=1, max_length=512)
    public_key: str = Field(max_length=4096)
    ttl_seconds: int | None = Field(default=None, gt=0)
