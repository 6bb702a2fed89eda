"""One HTTPS request to the proxy with the standard library's ``socket`` and ``ssl`` only.

For the quick paths of ``ptsh db ls`` and ``ptsh db connect``: ``http.client`` imports the
e-mail parser and loads the system's CA store for a context it never uses, and httpx more;
together they cost more than the rest of such a command. HTTP/1.1, one request per
connection, the body read by its ``Content-Length``. Raises ValueError for an answer this
reader does not take (chunked, no length, cut short) and OSError for the network's trouble,
so that a caller can hand the request to the full client instead.
"""

from __future__ import annotations

import socket
import ssl

from common.tlsctx import INTERNAL_SNI

MAX_HEAD = 64 * 1024
TIMEOUT = 30.0


def request(host: str, port: int, ctx: ssl.SSLContext, method: str, path: str,
            body: bytes | None = None) -> tuple[int, dict[bytes, bytes], bytes]:
    """(status, header fields by lower-case name, body) of one request to ``host:port``."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    head = f"{method} {path} HTTP/1.1\r\nHost: {where}\r\nAccept: application/json\r\nAccept-Encoding: identity\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    message = (head + "Connection: close\r\n\r\n").encode() + (body or b"")
    name = host.encode() if host.isascii() else host  # (a str goes through the IDNA codec: an import)
    with _dial(name, port) as raw, ctx.wrap_socket(raw, server_hostname=INTERNAL_SNI.encode()) as tls:
        tls.sendall(message)
        data = bytearray()
        while b"\r\n\r\n" not in data:
            chunk = tls.recv(65536)
            if not chunk or len(data) > MAX_HEAD:
                raise ValueError("no whole response head")
            data += chunk
        answer_head, _, rest = bytes(data).partition(b"\r\n\r\n")
        lines = answer_head.split(b"\r\n")
        version, _, status_text = lines[0].partition(b" ")
        if not version.startswith(b"HTTP/1."):
            raise ValueError("not an HTTP/1 response")
        status = int(status_text.split(b" ", 1)[0])
        fields = {}
        for line in lines[1:]:
            field, _, value = line.partition(b":")
            fields[field.strip().lower()] = value.strip()
        if b"transfer-encoding" in fields or b"content-length" not in fields:
            raise ValueError("a response without a Content-Length")
        length = int(fields[b"content-length"])
        answer = bytearray(rest)
        while len(answer) < length:
            chunk = tls.recv(max(length - len(answer), 65536))
            if not chunk:
                raise ValueError("the response was cut short")
            answer += chunk
    return status, fields, bytes(answer[:length])


def _dial(name: bytes | str, port: int) -> socket.socket:
    """A TCP connection whose small writes leave at once: without TCP_NODELAY the request can
    wait for the ACK of our TLS Finished, which the server may delay by 40 ms."""
    raw = socket.create_connection((name, port), TIMEOUT)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return raw
