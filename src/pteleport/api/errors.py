"""The one place where errors become HTTP responses (JSON ``{"error": {"message", "kind"}}``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from pydantic import ValidationError

from common.errors import BadParameter, NotFound, PteleportError, http_status_for

log = logging.getLogger("pteleport.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(err: PteleportError) -> web.Response:
    body = {"error": {"message": err.message, "kind": err.kind}}
    return web.json_response(body, status=http_status_for(err))


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
            log.info("%s %s: %s (%s)", request.method, request.path, err.message, err.detail)
        return error_response(err)
    except ValidationError as exc:
        return error_response(BadParameter(_validation_message(exc)))
    except json.JSONDecodeError:
        return error_response(BadParameter("the request body is not valid JSON"))
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
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
