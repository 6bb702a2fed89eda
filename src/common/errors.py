"""The one error vocabulary shared by pteleport, pctl and ptsh.

Every error carries a ``message`` that is safe to show a user (one sentence that says
what to do) and an optional ``detail`` for logs. Each kind is mapped to an HTTP status,
an exit code and a Postgres SQLSTATE in exactly one place: the tables at the bottom of
this module, read by the API error middleware, the CLI error handler and the Postgres
engine.

    PteleportError
     ├── BadParameter          400  exit 1   bad input (file, flag, request body)
     │    ├── UsageError       400  exit 2   wrong command-line usage
     │    └── Unsupported      400  exit 1   a feature pteleport does not offer (SQLSTATE 0A000)
     ├── NotFound              404  exit 1
     ├── AlreadyExists         409  exit 1
     ├── CompareFailed         409  exit 1   concurrent update lost the race
     ├── NotLoggedIn           401  exit 3   no credentials, or they expired
     ├── AccessDenied          403  exit 4   authenticated but not allowed
     ├── LimitExceeded         429  exit 4   rate limit / lock-out
     ├── ConnectionProblem     503  exit 5   cannot reach the cluster, an agent or a database
     └── InternalError         500  exit 1
"""

from __future__ import annotations


class PteleportError(Exception):
    """Base of every error the programs raise on purpose."""

    kind = "internal"

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return self.message


class BadParameter(PteleportError):
    kind = "bad_parameter"


class UsageError(BadParameter):
    kind = "usage"


class Unsupported(BadParameter):
    kind = "not_supported"


class NotFound(PteleportError):
    kind = "not_found"


class AlreadyExists(PteleportError):
    kind = "already_exists"


class CompareFailed(PteleportError):
    kind = "compare_failed"


class NotLoggedIn(PteleportError):
    kind = "not_logged_in"


class AccessDenied(PteleportError):
    kind = "access_denied"


class LimitExceeded(PteleportError):
    """Too many attempts; ``retry_after`` (seconds), when known, becomes HTTP's Retry-After."""

    kind = "limit_exceeded"

    def __init__(self, message: str, detail: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message, detail)
        self.retry_after = retry_after


class ConnectionProblem(PteleportError):
    kind = "connection_problem"


class InternalError(PteleportError):
    kind = "internal"


ALL_KINDS: dict[str, type[PteleportError]] = {
    cls.kind: cls
    for cls in (
        BadParameter,
        UsageError,
        Unsupported,
        NotFound,
        AlreadyExists,
        CompareFailed,
        NotLoggedIn,
        AccessDenied,
        LimitExceeded,
        ConnectionProblem,
        InternalError,
    )
}

# Exit codes documented in docs/cli.md.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_LOGGED_IN = 3
EXIT_ACCESS_DENIED = 4
EXIT_UNREACHABLE = 5

_EXIT_CODES: dict[str, int] = {
    "usage": EXIT_USAGE,
    "not_logged_in": EXIT_NOT_LOGGED_IN,
    "access_denied": EXIT_ACCESS_DENIED,
    "limit_exceeded": EXIT_ACCESS_DENIED,
    "connection_problem": EXIT_UNREACHABLE,
}

_HTTP_STATUS: dict[str, int] = {
    "bad_parameter": 400,
    "usage": 400,
    "not_supported": 400,
    "not_found": 404,
    "already_exists": 409,
    "compare_failed": 409,
    "not_logged_in": 401,
    "access_denied": 403,
    "limit_exceeded": 429,
    "connection_problem": 503,
    "internal": 500,
}

# Postgres SQLSTATE codes sent in ErrorResponse by the database agent.
_SQLSTATE: dict[str, str] = {
    "access_denied": "42501",  # insufficient_privilege
    "not_logged_in": "28000",  # invalid_authorization_specification: log in again
    "bad_parameter": "08P01",  # protocol_violation
    "usage": "08P01",
    "not_supported": "0A000",  # feature_not_supported
    "not_found": "3D000",  # invalid_catalog_name
    "connection_problem": "08006",  # connection_failure
    "limit_exceeded": "53300",  # too_many_connections
}


def exit_code_for(err: BaseException) -> int:
    """The process exit code for an error (docs/cli.md lists them)."""
    if isinstance(err, PteleportError):
        return _EXIT_CODES.get(err.kind, EXIT_ERROR)
    return EXIT_ERROR


def http_status_for(err: PteleportError) -> int:
    """The HTTP status the API answers with for an error."""
    return _HTTP_STATUS.get(err.kind, 500)


def sqlstate_for(err: PteleportError) -> str:
    """The SQLSTATE the database agent puts in a Postgres ErrorResponse."""
    return _SQLSTATE.get(err.kind, "XX000")


def from_sqlstate(sqlstate: str, message: str) -> PteleportError:
    """An ErrorResponse the cluster sent, as the error it was made from (the client side of
    ``sqlstate_for``); a connection-class code (08, 57P) that is not ours is unreachability too."""
    for kind, code in _SQLSTATE.items():
        if code == sqlstate:
            return ALL_KINDS[kind](message)
    if sqlstate.startswith(("08", "57P")):
        return ConnectionProblem(message)
    return InternalError(message)


def from_kind(kind: str, message: str) -> PteleportError:
    """Rebuild an error received over the API (the client side of ``http_status_for``)."""
    return ALL_KINDS.get(kind, InternalError)(message)


def from_http_answer(status: int, body: object, retry_after: str = "") -> PteleportError:
    """The error an API answer of ``status`` >= 400 carries (``body``: its decoded JSON, or None).

    The API's error middleware writes ``{"error": {"kind", "message"}}``; anything else is
    described by its status.
    """
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    kind = error.get("kind") if isinstance(error, dict) else None
    if not message:
        message = f"the cluster answered HTTP {status}"
    if status == 429 and not kind:
        kind = "limit_exceeded"
    err = from_kind(kind or ("not_logged_in" if status == 401 else "internal"), message)
    if isinstance(err, LimitExceeded):
        err.retry_after = int(retry_after) if retry_after.isdigit() else None
    return err
