"""The access request routes under /v1/requests, and /v1/certs/reissue (assume or drop a request).

``GET /v1/requests/{id}?wait=SECONDS`` is a long poll: it answers as soon as the request
is no longer pending (or after at most ``MAX_WAIT`` seconds with it still pending), so a
waiting ``ptsh request create`` hears of an approval or a denial within a fraction of a
second without holding a worker thread while it waits.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from common.errors import BadParameter
from pteleport.api import offload
from pteleport.api.app import Call, route

MAX_WAIT = 25.0  # below the clients' 30 s read timeout
POLL_EVERY = 0.2


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateRequest(_Body):
    roles: list[str] = Field(default_factory=list)
    reason: str = ""
    reviewers: list[str] = Field(default_factory=list)
    request_ttl_seconds: int | None = None
    session_ttl_seconds: int | None = None


class ReviewRequest(_Body):
    approve: bool
    reason: str = ""


class StateRequest(_Body):
    state: Literal["APPROVED", "DENIED"]
    reason: str = ""


class ReissueRequest(_Body):
    public_key: str
    add: list[str] = Field(default_factory=list)
    drop: list[str] = Field(default_factory=list)


def _ttl(seconds: int | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)


@route(CreateRequest)
def requests_create(c: Call, req: CreateRequest) -> Any:
    return c.auth.requests.create(
        c.me(), req.roles, req.reason, req.reviewers, _ttl(req.request_ttl_seconds), _ttl(req.session_ttl_seconds)
    )


@route()
def requests_list(c: Call, _: None) -> Any:
    return c.auth.requests.list(c.me())


@route(ReviewRequest)
def requests_review(c: Call, req: ReviewRequest) -> Any:
    return c.auth.requests.review(c.me(), c.match["id"], req.approve, req.reason)


@route(StateRequest)
def requests_state(c: Call, req: StateRequest) -> Any:
    return c.auth.requests.set_state(c.me(), c.match["id"], req.state == "APPROVED", req.reason)


@route()
def requests_remove(c: Call, _: None) -> Any:
    c.auth.requests.delete(c.me(), c.match["id"])
    return {"deleted": True}


@route(ReissueRequest)
def certs_reissue(c: Call, req: ReissueRequest) -> Any:
    auth = c.auth
    cert, identity = auth.requests.assume(c.me(), req.public_key, req.add, req.drop)
    return {
        "cert": cert.decode(),
        "cas": auth.public_cas(),
        "cluster_name": auth.cluster_name,
        "username": identity.username,
        "roles": list(identity.roles),
        "active_requests": list(identity.active_requests),
        "expires": identity.expires.isoformat() if identity.expires else None,
    }


async def requests_get(request: web.Request) -> web.Response:
    """One request; with ``?wait=N`` the answer waits (up to N s) for it to leave PENDING."""
    raw = request.query.get("wait", "0") or "0"
    try:
        wait = min(max(float(raw), 0.0), MAX_WAIT)
    except ValueError:
        raise BadParameter("wait must be a number of seconds") from None
    call = Call.of(request)

    def job() -> dict[str, Any]:
        return call.auth.requests.get(call.me(), call.match["id"])

    deadline = time.monotonic() + wait
    while True:
        doc = await offload.run(request, job)
        if doc["spec"]["state"] != "PENDING" or doc["spec"].get("expired") or time.monotonic() >= deadline:
            return offload.response(await offload.run(request, offload.encode, doc))
        await asyncio.sleep(POLL_EVERY)


def add_request_routes(r: web.UrlDispatcher) -> None:
    r.add_post("/v1/requests", requests_create)
    r.add_get("/v1/requests", requests_list)
    r.add_get("/v1/requests/{id}", requests_get)
    r.add_post("/v1/requests/{id}/reviews", requests_review)
    r.add_put("/v1/requests/{id}/state", requests_state)
    r.add_delete("/v1/requests/{id}", requests_remove)
    r.add_post("/v1/certs/reissue", certs_reissue)
