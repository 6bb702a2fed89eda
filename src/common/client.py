"""HTTPS client for the cluster API (httpx), used by ptsh, pctl and the database agent.

Two trust modes:

- *web*: before login, the proxy's web certificate is checked against the system trust
  store (or ``ca_file``), or not at all with ``insecure=True``;
- *internal*: with a cluster identity (after login, the admin identity, an agent's host
  certificate), requests carry the SNI name ``pteleport.cluster.local``, the proxy answers
  with its host certificate, and only the cluster's host CA is trusted.

HTTP errors become the matching ``common.errors`` kind with the server's message (a 429
keeps its ``Retry-After`` in ``LimitExceeded.retry_after``); network failures become
ConnectionProblem naming the address.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import httpx

from common.errors import (
    ConnectionProblem,
    InternalError,
    NotLoggedIn,
    PteleportError,
    UsageError,
    from_http_answer,
)
from common.tls import INTERNAL_SNI, client_context, describe_ssl_error

TIMEOUT = httpx.Timeout(30.0, connect=10.0)
NDJSON = "application/x-ndjson"  # one JSON value per line: how agents send audit events


@dataclass(frozen=True)
class ClusterCredentials:
    """A certificate and key to present, and the host CA(s) that vouch for the proxy."""

    cert: bytes | None
    key: bytes | None
    host_cas: bytes


class AddressError(UsageError, ValueError):
    """An address that is not HOST:PORT (exit 2: it came from a flag or the environment)."""


def normalize_addr(addr: str, default_port: int = 3080) -> str:
    """``HOST[:PORT]`` (an ``https://`` prefix and a trailing ``/`` allowed) as ``HOST:PORT``."""
    raw = addr
    addr = addr.strip()
    for prefix in ("https://", "http://"):
        if addr.startswith(prefix):
            addr = addr[len(prefix) :]
    addr = addr.rstrip("/")
    if addr.startswith("["):
        host, sep, rest = addr[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ("" if not rest else None)
        if not sep or port is None or not host:
            raise _bad_addr(raw, "an IPv6 address goes in brackets, e.g. [::1]:3080")
        host = f"[{host}]"
    else:
        host, sep, port = addr.rpartition(":") if ":" in addr else (addr, "", "")
        if ":" in host:
            raise _bad_addr(raw, "an IPv6 address goes in brackets, e.g. [::1]:3080")
    if not host or any(ch in host for ch in "/@?# \t"):
        raise _bad_addr(raw, "e.g. 127.0.0.1:3080 or proxy.example.com:443")
    if not port:
        port = str(default_port)
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise _bad_addr(raw, "the port is a number from 1 to 65535")
    return f"{host}:{int(port)}"


def _bad_addr(addr: str, hint: str) -> AddressError:
    shown = "".join(ch if ch.isprintable() else "?" for ch in addr)
    return AddressError(f'"{shown}" is not an address HOST:PORT; {hint}')


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    raise from_http_answer(response.status_code, body, response.headers.get("Retry-After", ""))


def _network_error(addr: str, exc: Exception, with_cert: bool = False) -> PteleportError:
    cause = exc.__context__ or exc.__cause__ or exc
    if with_cert and isinstance(exc, httpx.RemoteProtocolError):
        # TLS 1.3: the server checks our certificate after our side of the handshake is done;
        # when it refuses it and closes without an alert, this is all a client sees.
        return NotLoggedIn(
            f"the cluster at {addr} closed the connection without answering: it most likely refused your "
            "certificate (expired, altered, or issued by another cluster); log in again"
        )
    if isinstance(cause, ssl.SSLError) or isinstance(exc, ssl.SSLError) or "SSL" in str(exc):
        text = describe_ssl_error(cause if isinstance(cause, ssl.SSLError) else exc)
        if "refused your certificate" in text:
            return NotLoggedIn(text)
        return ConnectionProblem(f"cannot connect securely to {addr}: {text}")
    return ConnectionProblem(
        f"cannot reach the cluster at {addr}: {exc or type(exc).__name__}; check the address and that "
        "the proxy is running"
    )


class ClusterClient:
    """Synchronous API client (the CLIs)."""

    def __init__(
        self,
        addr: str,
        *,
        creds: ClusterCredentials | None = None,
        insecure: bool = False,
        ca_file: str | None = None,
        timeout: httpx.Timeout = TIMEOUT,
    ) -> None:
        self.addr = normalize_addr(addr)
        self.creds = creds
        if creds is not None:
            ctx = client_context(cas=creds.host_cas, cert=creds.cert, key=creds.key, alpn=["http/1.1"])
        else:
            ctx = client_context(insecure=insecure, ca_file=ca_file, alpn=["http/1.1"])
        self._extensions = {"sni_hostname": INTERNAL_SNI} if creds is not None else {}
        self._http = httpx.Client(base_url=f"https://{self.addr}", verify=ctx, timeout=timeout)

    def request(self, method: str, path: str, *, json: Any = None, params: Any = None) -> Any:
        try:
            response = self._http.request(method, path, json=json, params=params, extensions=self._extensions)
        except httpx.HTTPError as exc:
            raise _network_error(self.addr, exc, self.creds is not None and self.creds.cert is not None) from None
        _raise_for(response)
        try:
            return response.json()
        except ValueError:
            raise InternalError(f"the cluster at {self.addr} sent a response that is not JSON") from None

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body if body is not None else {})

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, json=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ClusterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClusterClient:
    """Asynchronous API client (the database agent), always in internal mode."""

    def __init__(self, addr: str, creds: ClusterCredentials, timeout: httpx.Timeout = TIMEOUT) -> None:
        self.addr = normalize_addr(addr)
        ctx = client_context(cas=creds.host_cas, cert=creds.cert, key=creds.key, alpn=["http/1.1"])
        self._http = httpx.AsyncClient(base_url=f"https://{self.addr}", verify=ctx, timeout=timeout)

    async def request(self, method: str, path: str, *, json: Any = None, params: Any = None) -> Any:
        try:
            response = await self._http.request(
                method, path, json=json, params=params, extensions={"sni_hostname": INTERNAL_SNI}
            )
        except httpx.HTTPError as exc:
            raise _network_error(self.addr, exc) from None
        _raise_for(response)
        return response.json()

    async def get(self, path: str, **kw: Any) -> Any:
        return await self.request("GET", path, **kw)

    async def get_if_changed(self, path: str, etag: str | None) -> tuple[Any | None, str | None]:
        """GET with ``If-None-Match``: (None, etag) when unchanged (304), else (body, new etag)."""
        headers = {"If-None-Match": etag} if etag else {}
        try:
            response = await self._http.get(path, headers=headers, extensions={"sni_hostname": INTERNAL_SNI})
        except httpx.HTTPError as exc:
            raise _network_error(self.addr, exc) from None
        if response.status_code == 304:
            return None, etag
        _raise_for(response)
        return response.json(), response.headers.get("ETag")

    async def post(self, path: str, body: Any = None) -> Any:
        return await self.request("POST", path, json=body if body is not None else {})

    async def post_lines(self, path: str, lines: list[str]) -> Any:
        """POST ``lines`` (each one JSON value, no newline) as one NDJSON body."""
        body = ("\n".join(lines) + "\n").encode()
        try:
            response = await self._http.post(
                path, content=body, headers={"Content-Type": NDJSON}, extensions={"sni_hostname": INTERNAL_SNI}
            )
        except httpx.HTTPError as exc:
            raise _network_error(self.addr, exc) from None
        _raise_for(response)
        return response.json()

    async def aclose(self) -> None:
        await self._http.aclose()
