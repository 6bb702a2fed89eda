"""The daemon's configuration: teleport.yaml's shape, validated once at load.

A bad file is refused with one line naming the key and what is wrong
(``ConfigError``); everything after loading works with typed values.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from common.durations import parse_duration
from common.errors import BadParameter
from common.paths import default_data_dir

DEFAULT_LISTEN = "127.0.0.1:3080"
# Shortest static join token accepted (auth_service.tokens); shorter ones are guessable.
MIN_STATIC_TOKEN = 16


class ConfigError(BadParameter):
    """A configuration file or flag that cannot be used."""


def _yes_no(value: Any) -> Any:
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("yes", "true", "on", "1"):
            return True
        if low in ("no", "false", "off", "0"):
            return False
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _duration(value: Any) -> Any:
    """A duration field stays a string, checked by the one parser (a bare number needs a unit)."""
    try:
        parse_duration(value)
    except BadParameter as exc:
        raise PydanticCustomError("duration", exc.message) from None
    return str(value).strip()


class LogConfig(_Strict):
    output: str = "stderr"
    severity: Literal["DEBUG", "INFO", "WARN", "WARNING", "ERROR", "debug", "info", "warn", "error"] = "INFO"
    format: dict[str, Any] | None = None


class StorageConfig(_Strict):
    type: Literal["sqlite", "postgresql", "memory"] = "sqlite"
    path: str | None = None
    conn_string: str | None = None
    audit_events_uri: list[str] | str | None = None


class JoinParams(_Strict):
    join_method: Literal["token", "iam"] = "token"
    token_name: str


class TeleportSection(_Strict):
    nodename: str = Field(default_factory=socket.gethostname)
    data_dir: str = Field(default_factory=default_data_dir)
    log: LogConfig = Field(default_factory=LogConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    proxy_server: str | None = None
    auth_server: str | None = None
    auth_servers: list[str] | None = None
    auth_token: str | None = None
    join_params: JoinParams | None = None
    ca_pin: list[str] | str | None = None
    pid_file: str | None = None
    diag_addr: str | None = None
    # SIGTERM: how long open database sessions get to finish before they are ended.
    shutdown_timeout: str = "30s"

    _d = field_validator("shutdown_timeout", mode="before")(lambda cls, v: _duration(v))

    @property
    def ca_pins(self) -> list[str]:
        if self.ca_pin is None:
            return []
        return [self.ca_pin] if isinstance(self.ca_pin, str) else list(self.ca_pin)

    @property
    def token(self) -> str | None:
        return self.join_params.token_name if self.join_params else self.auth_token


class AuthenticationConfig(_Strict):
    type: Literal["local"] = "local"
    second_factor: Literal["otp", "off"] = "otp"

    @field_validator("second_factor", mode="before")
    @classmethod
    def _off(cls, v: Any) -> Any:
        return "off" if v is False else v


class AuditConfig(_Strict):
    retention: str = "90d"

    _d = field_validator("retention", mode="before")(lambda cls, v: _duration(v))


class LockoutConfig(_Strict):
    max_attempts: int = 5
    lockout_duration: str = "20m"

    _d = field_validator("lockout_duration", mode="before")(lambda cls, v: _duration(v))


class IamJoinConfig(_Strict):
    # Tests only: send IAM join requests here instead of AWS STS (refused outside test mode).
    sts_endpoint_override: str | None = None


class AuthService(_Strict):
    enabled: bool = True
    cluster_name: str | None = None
    listen_addr: str | None = None
    authentication: AuthenticationConfig = Field(default_factory=AuthenticationConfig)
    tokens: list[str] = Field(default_factory=list)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    lockout: LockoutConfig = Field(default_factory=LockoutConfig)
    iam_join: IamJoinConfig = Field(default_factory=IamJoinConfig)

    _b = field_validator("enabled", mode="before")(lambda cls, v: _yes_no(v))


class KeyPair(_Strict):
    cert_file: str
    key_file: str


class ProxyService(_Strict):
    enabled: bool = True
    web_listen_addr: str = DEFAULT_LISTEN
    public_addr: list[str] | str | None = None
    https_keypairs: list[KeyPair] = Field(default_factory=list)
    postgres_listen_addr: str | None = None
    postgres_public_addr: str | None = None
    # This proxy's own HOST:PORT for agents (the agent mesh); not a load balancer's.
    advertise_addr: str | None = None

    _b = field_validator("enabled", mode="before")(lambda cls, v: _yes_no(v))

    @property
    def public_addrs(self) -> list[str]:
        if self.public_addr is None:
            return []
        return [self.public_addr] if isinstance(self.public_addr, str) else list(self.public_addr)


class DatabaseTLS(_Strict):
    mode: Literal["verify-full", "verify-ca", "insecure"] = "verify-full"
    ca_cert_file: str | None = None
    ca_cert: str | None = None
    server_name: str | None = None


class DatabaseAWS(_Strict):
    region: str | None = None
    assume_role_arn: str | None = None
    external_id: str | None = None
    account_id: str | None = None
    rds: dict[str, Any] | None = None


class DatabaseAdminUser(_Strict):
    name: str = Field(min_length=1)
    default_database: str | None = None


class DatabaseConfig(_Strict):
    name: str
    description: str = ""
    protocol: Literal["postgres"] = "postgres"
    uri: str
    static_labels: dict[str, str] = Field(default_factory=dict)
    tls: DatabaseTLS = Field(default_factory=DatabaseTLS)
    aws: DatabaseAWS = Field(default_factory=DatabaseAWS)
    password_file: str | None = None
    admin_user: DatabaseAdminUser | None = None


class ResourceMatcher(_Strict):
    labels: dict[str, str | list[str]] = Field(default_factory=dict)
    aws: dict[str, Any] | None = None


DEFAULT_SPOOL_MAX_BYTES = 1 << 30  # 1 GiB


class DbAuditConfig(_Strict):
    """How the agent keeps audit events while auth cannot take them (docs/config.md)."""

    spool_max_bytes: int = Field(default=DEFAULT_SPOOL_MAX_BYTES, ge=0)
    unaudited_sessions: Literal["refuse", "allow"] = "refuse"


class DbService(_Strict):
    enabled: bool = False
    databases: list[DatabaseConfig] = Field(default_factory=list)
    resources: list[ResourceMatcher] = Field(default_factory=list)
    aws: list[dict[str, Any]] = Field(default_factory=list)
    audit: DbAuditConfig = Field(default_factory=DbAuditConfig)

    _b = field_validator("enabled", mode="before")(lambda cls, v: _yes_no(v))


class Disabled(BaseModel):
    model_config = ConfigDict(extra="allow")
    enabled: bool = False

    _b = field_validator("enabled", mode="before")(lambda cls, v: _yes_no(v))


class Config(_Strict):
    version: Literal["v1", "v2", "v3"] = "v3"
    teleport: TeleportSection = Field(default_factory=TeleportSection)
    auth_service: AuthService = Field(default_factory=AuthService)
    proxy_service: ProxyService = Field(default_factory=ProxyService)
    db_service: DbService = Field(default_factory=DbService)
    ssh_service: Disabled = Field(default_factory=Disabled)
    app_service: Disabled = Field(default_factory=Disabled)
    kubernetes_service: Disabled = Field(default_factory=Disabled)

    @property
    def data_dir(self) -> Path:
        return Path(self.teleport.data_dir)


def _describe(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        return f"{source}: unknown key {loc}; check its spelling against docs/config.md"
    if kind == "missing":
        return f"{source}: {loc} is required"
    msg = first["msg"]
    value = first.get("input")
    shown = f" (got {value!r})" if isinstance(value, str | int | float | bool) else ""
    return f"{source}: {loc}: {msg}{shown}"


def parse_config(data: Any, source: str = "config") -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections (teleport, auth_service, ...)")
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
    _check_static_tokens(config.auth_service.tokens, source)
    _check_test_only(config, source)
    return config


INSECURE_TEST_MODE = "PTELEPORT_INSECURE_TEST_MODE"


def _check_test_only(config: Config, source: str) -> None:
    """The STS endpoint override turns off IAM join's one check of who signed: tests only."""
    override = config.auth_service.iam_join.sts_endpoint_override
    if override and os.environ.get(INSECURE_TEST_MODE) != "yes":
        raise ConfigError(
            f"{source}: auth_service.iam_join.sts_endpoint_override sends IAM join requests to {override} instead of"
            f" AWS STS, which is for tests only; remove it (or, in a test, set {INSECURE_TEST_MODE}=yes)"
        )


def _check_static_tokens(tokens: list[str], source: str) -> None:
    """Each entry is ``TYPES:VALUE`` with a value long enough not to be guessed (never echoed)."""
    for number, entry in enumerate(tokens, 1):
        kinds, sep, value = entry.rpartition(":")
        where = f"{source}: auth_service.tokens entry {number}"
        if not sep or not kinds or not value:
            raise ConfigError(f'{where} is not "TYPES:VALUE", e.g. "db:" followed by 32 random hex digits')
        if len(value) < MIN_STATIC_TOKEN:
            raise ConfigError(
                f"{where} ({kinds}) is too short to be safe ({len(value)} characters); a static token needs at "
                f"least {MIN_STATIC_TOKEN}: use e.g. 32 hex digits from openssl rand -hex 16, or pctl tokens add"
            )


def load_config(path: str) -> Config:
    """Read and validate a YAML config file; every failure is a one-line ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return parse_config(data, path)
