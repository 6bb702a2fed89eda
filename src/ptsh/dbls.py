"""``ptsh db ls`` without Typer or httpx: its plain forms, one GET, the same output.

``ptsh.entry`` calls ``run`` with the words after ``db ls`` when they are only
``-v``/``--verbose`` and ``--format``/``-f`` ``text`` or ``json``. Anything else, and any
answer but a whole 200, prints nothing and returns False: the Typer command then runs,
and it gives the sentence and the exit code (a GET can be repeated).

The request is written and read here (HTTP/1.1, one request per connection, the body by
its ``Content-Length``): ``http.client`` imports the e-mail parser, and it loads the
system's CA store for a context it never uses; together they cost more than the rest of
the command. Only the standard library's ``socket``, ``ssl`` and ``json`` are imported.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ptsh.login_state import Login

FORMATS = ("text", "json")
MAX_HEAD = 64 * 1024


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
    """One HTTPS GET to the proxy with the login's certificate: (status, body).

    Raises ValueError for an answer this reader does not take (chunked, no length, cut short).
    """
    import socket

    from common.tlsctx import ALPN_HTTP, INTERNAL_SNI, client_context
    from ptsh.databases import proxy_host_port

    host, port = proxy_host_port(login)
    ctx = client_context(cas=login.host_cas, cert=login.cert, key=login.key, alpn=[ALPN_HTTP])
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    request = (f"GET {path} HTTP/1.1\r\nHost: {where}\r\nAccept: application/json\r\n"
               "Accept-Encoding: identity\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection((host, port), 30) as raw, ctx.wrap_socket(raw, server_hostname=INTERNAL_SNI) as tls:
        tls.sendall(request)
        data = bytearray()
        while b"\r\n\r\n" not in data:
            chunk = tls.recv(65536)
            if not chunk or len(data) > MAX_HEAD:
                raise ValueError("no whole response head")
            data += chunk
        head, _, rest = bytes(data).partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        version, _, status_text = lines[0].partition(b" ")
        if not version.startswith(b"HTTP/1."):
            raise ValueError("not an HTTP/1 response")
        status = int(status_text.split(b" ", 1)[0])
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        if b"transfer-encoding" in fields or b"content-length" not in fields:
            raise ValueError("a response without a Content-Length")
        length = int(fields[b"content-length"])
        body = bytearray(rest)
        while len(body) < length:
            chunk = tls.recv(max(length - len(body), 65536))
            if not chunk:
                raise ValueError("the response was cut short")
            body += chunk
    return status, bytes(body[:length])
