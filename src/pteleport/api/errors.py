"""The one place where errors become HTTP responses (JSON ``{"error": {"message", "kind"}}``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from pydantic import ValidationError

from common.errors import BadParameter, LimitExceeded, NotFound, PteleportError, http_status_for

log = logging.getLogger("pteleport.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_headers(err: PteleportError) -> dict[str, str]:
    """Headers an error response carries: ``Retry-After`` (seconds) for a limit with a known wait."""
    if isinstance(err, LimitExceeded) and err.retry_after:
        return {"Retry-After": str(int(err.retry_after))}
    return {}


def error_response(err: PteleportError) -> web.Response:
    body = {"error": {"message": err.message, "kind": err.kind}}
    return web.json_response(body, status=http_status_for(err), headers=error_headers(err))


def route_of(request: web.Request) -> str:
    """What logs name a request by: its route pattern (``/v1/invites/{token}``), never the
    path, which may hold a secret."""
    resource = request.match_info.route.resource if request.match_info.route else None
    if resource is not None:
        return resource.canonical
    return "(no such route)"


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "body"
    if first["type"] == "extra_forbidden":
        return f"unknown field {loc} in the request"
    if first["type"] == "missing":
        return f"the request is missing {loc}"
    return f"{loc}: {first['msg']}"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return error_response(_http_error(exc, request))
        raise
    except PteleportError as err:
        if err.detail:
            log.info("%s %s: %s (%s)", request.method, route_of(request), err.message, err.detail)
        return error_response(err)
    except ValidationError as exc:
        return error_response(BadParameter(_validation_message(exc)))
    except json.JSONDecodeError:
        return error_response(BadParameter("the request body is not valid JSON"))
    except Exception:
        log.exception("internal error on %s %s", request.method, route_of(request))
        return web.json_response(
            {"error": {"message": "internal error; the details are in the server log", "kind": "internal"}},
            status=500,
        )


def _http_error(exc: web.HTTPException, request: web.Request) -> PteleportError:
    if exc.status == 404:
        return NotFound(f"no such API endpoint: {request.method} {request.path}")
    if exc.status == 405:
        return BadParameter("this API endpoint does not accept that method")
    return BadParameter(exc.reason or "bad request")
