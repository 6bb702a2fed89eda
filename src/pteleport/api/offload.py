"""The auth worker threads: where every API handler does its storage and CPU work.

The API runs on the event loop that also relays database sessions (proxy and tunnel), so a
handler never touches storage, hashes a password or encodes a big answer there. It reads
the request on the loop, then hands one function to ``run`` (a pool of ``WORKERS``
threads, ``auth-N``): the body is validated, the caller's certificate checked, the auth
service called and the answer encoded as JSON in that thread; the loop only writes the
bytes back. docs/design-notes.md has the measurements behind this choice.

Agents' heartbeats run in a pool of their own (``BACKGROUND``, ``BACKGROUND_WORKERS``
threads): a hundred agents renewing their registrations every few seconds would otherwise
fill every worker thread and queue a user's ``ptsh db ls`` behind their storage writes.

JSON is encoded with orjson (a 10,000-event page of the audit log in ~5 ms here, against
~60 ms with ``json``), one list item (or one top-level value) at a time: each call holds
the GIL for as long as it runs, and item by item the loop gets it between items. What
orjson cannot encode (an integer past 64 bits) is encoded by ``json``.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from aiohttp import web

T = TypeVar("T")

WORKERS = 8
BACKGROUND_WORKERS = 2
POOL = web.AppKey("auth_workers", ThreadPoolExecutor)
BACKGROUND = web.AppKey("background_workers", ThreadPoolExecutor)


def new_pool(workers: int = WORKERS, name: str = "auth") -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)


async def run(request: web.Request, fn: Callable[..., T], *args: Any, pool: web.AppKey = POOL) -> T:
    """``fn(*args)`` in the app's auth worker threads (``pool``: ``POOL`` or ``BACKGROUND``)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(request.app[pool], functools.partial(fn, *args))


@dataclass
class Reply:
    """An answer other than 200 + JSON body: a status, headers, or no body (``body=None``)."""

    body: Any = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


def dumps(value: Any) -> bytes:
    """``value`` as JSON (UTF-8), encoded piece by piece (lists by item, dicts by value)."""
    if isinstance(value, list):
        return b"[" + b",".join(map(_dumps, value)) + b"]"
    if isinstance(value, dict) and any(isinstance(v, list | dict) for v in value.values()):
        return b"{" + b",".join(_dumps(str(k)) + b":" + dumps(v) for k, v in value.items()) + b"}"
    return _dumps(value)


_AS_JSON_DOES = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
"""Integer keys become strings, as ``json`` makes them; datetimes and dataclasses are left to
``json``, which refuses them (a handler that returns one has a bug)."""


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=_AS_JSON_DOES)
    except TypeError:  # an integer past 64 bits, a surrogate, or what json refuses too
        return json.dumps(value, separators=(",", ":")).encode()


def encode(result: Any) -> tuple[bytes | None, int, dict[str, str]]:
    """A handler's result as (body, status, headers), encoded in the worker thread."""
    if isinstance(result, Reply):
        body = None if result.body is None else dumps(result.body)
        return body, result.status, result.headers
    return dumps(result), 200, {}


def response(encoded: tuple[bytes | None, int, dict[str, str]]) -> web.Response:
    body, status, headers = encoded
    if body is None:
        return web.Response(status=status, headers=headers)
    return web.Response(body=body, status=status, headers=headers, content_type="application/json")
