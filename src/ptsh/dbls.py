"""``ptsh db ls`` without Typer or httpx: its plain forms, one GET, the same output.

``ptsh.entry`` calls ``run`` with the words after ``db ls`` when they are only
``-v``/``--verbose`` and ``--format``/``-f`` ``text`` or ``json``. Anything else, and any
answer but a whole 200, prints nothing and returns False: the Typer command then runs,
and it gives the sentence and the exit code (a GET can be repeated).

The request is written and read by ``common.minihttps`` (HTTP/1.1, one request per
connection, the body by its ``Content-Length``): only the standard library's ``socket``,
``ssl`` and ``json`` are imported.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ptsh.login_state import Login

FORMATS = ("text", "json")


def options(words: list[str]) -> tuple[bool, str] | None:
    """(verbose, format) of the words after ``db ls``; None: a form for the Typer command."""
    verbose, fmt = False, "text"
    i = 0
    while i < len(words):
        word = words[i]
        if word in ("-v", "--verbose"):
            verbose = True
        elif word.startswith("--format="):
            fmt = word[len("--format=") :]
        elif word in ("--format", "-f") and i + 1 < len(words):
            fmt = words[i + 1]
            i += 1
        else:
            return None
        i += 1
    return (verbose, fmt) if fmt in FORMATS else None


def run(words: list[str]) -> bool:
    """Print what ``ptsh db ls WORDS`` prints; False (nothing printed) when the Typer command must."""
    parsed = options(words)
    if parsed is None:
        return False
    verbose, fmt = parsed
    import json

    try:
        from ptsh.login_state import current_login

        login = current_login(None)
        status, body = get(login, "/v1/databases")
        if status != 200:
            return False
        dbs = json.loads(body)
        if fmt == "json":  # what common.cli.render prints
            out = json.dumps(dbs, indent=2, sort_keys=False, default=str) + "\n"
        else:
            from ptsh.databases import db_table

            out = db_table(login, dbs, verbose) + "\n"
    except Exception:  # the Typer command runs instead: it gives the sentence and the exit code
        return False
    sys.stdout.write(out)
    sys.stdout.flush()
    if fmt == "text" and len(dbs) >= 20:
        from ptsh.databases import DB_LS_HINT

        print(DB_LS_HINT, file=sys.stderr, flush=True)
    return True


def get(login: Login, path: str) -> tuple[int, bytes]:
    """One HTTPS GET to the proxy with the login's certificate: (status, body) (``common.minihttps``)."""
    from common.minihttps import request
    from common.tlsctx import ALPN_HTTP, client_context
    from ptsh.databases import proxy_host_port

    host, port = proxy_host_port(login)
    ctx = client_context(cas=login.host_cas, cert=login.cert, key=login.key, alpn=[ALPN_HTTP])
    status, _fields, body = request(host, port, ctx, "GET", path)
    return status, body
