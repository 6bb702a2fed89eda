"""HTML for the web UI: the Jinja2 templates, the static files, and the headers every page carries.

Templates autoescape everything; pages are rendered in the auth worker threads
(``api.offload``), never on the event loop. Every page has the same security headers
(``SECURITY_HEADERS``): no caching, no referrer, no framing, and a Content-Security-Policy
that allows scripts and styles only from this origin's ``/web/static/`` files, so no
inline script can run. The static files are read once, at start-up.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",  # a form post then carries Origin (no-referrer makes it "null")
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


@dataclass
class Html:
    """A rendered page: its body, status and extra headers; cookies to set (value, max-age) or clear (None)."""

    body: str
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    cookies: dict[str, tuple[str, int] | None] = field(default_factory=dict)


@dataclass
class Redirect:
    """A 303 to ``location`` (after a form, or to the sign-in page), with cookies as in ``Html``."""

    location: str
    cookies: dict[str, tuple[str, int] | None] = field(default_factory=dict)


@functools.cache
def environment() -> Any:
    """The Jinja2 environment (built once, on first use: Jinja2 is not needed before a page is)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pteleport.api.webui", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pretty_json"] = lambda value: json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)
    return env


def render(template: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any) -> Html:
    return Html(environment().get_template(template).render(**context), status, dict(headers or {}))


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


@functools.cache
def static_files() -> dict[str, StaticFile]:
    """``/web/static/<name>``: the files shipped in the package (read once)."""
    files: dict[str, StaticFile] = {}
    for entry in resources.files("pteleport.api.webui").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in STATIC_TYPES:
            body = entry.read_bytes()
            files[entry.name] = StaticFile(
                body, STATIC_TYPES[suffix], '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            )
    return files
