"""The local authenticated tunnel: plain Postgres on 127.0.0.1, mTLS to the proxy.

psql (or any client) connects without TLS; the tunnel answers its SSLRequest/GSSENCRequest
with "N", then opens one mTLS connection per client connection to the proxy (ALPN
``pteleport-postgres``) with the user's database certificate, and splices the bytes.
psql's Ctrl+C arrives as a CancelRequest on a new plain connection; it travels the same
way, so the proxy always sees a certificate and cancel works.

``preflight`` opens the first session before any client arrives (``ptsh db connect`` does it
before it starts psql), so that a proxy, agent or database that cannot be reached, or a
refusal, is an error with its exit code instead of psql's; that session is then handed to
the first client whose startup message is the same, so it is not a second session.

Every refusal reaches the client as a PostgreSQL ErrorResponse with one sentence (built in
``refusal``; SQLSTATE from ``common.errors``), never as a silently closed socket: a
certificate that expired and could not be renewed (28000), the proxy refusing the TLS
handshake (its alert in words, 28000), a proxy that cannot be reached (08006), a client
that does not speak PostgreSQL (08P01). ``CertSource`` renews the certificate when a client
arrives and it has expired or is about to, not only on a timer.

No Typer here: ``ptsh db connect`` and ``ptsh proxy db`` drive it, and tests can too.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from common.errors import BadParameter, InternalError, PteleportError
from common.relay import Connection, splice
from common.sockettransport import open_tls
from common.tlsctx import ALPN_POSTGRES, INTERNAL_SNI, client_context
from ptsh.pgstartup import (
    DIAL_TIMEOUT,
    GREETING_TIMEOUT,
    NO_STARTUP,
    RENEW_BEFORE,
    TERMINATE,
    Greeting,
    ProxyTrouble,
    is_cancel,
    refusal,
    startup_packet,
    startup_params,
    startup_rest,
)

log = logging.getLogger("ptsh.tunnel")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed (cheaper TLS connections), else asyncio's."""
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(coro: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(coro)


# After a renewal attempt, the next one waits this long unless the certificate has expired.
RENEW_INTERVAL = timedelta(seconds=30)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _not_after(cert: bytes) -> datetime:
    from cryptography import x509

    return x509.load_pem_x509_certificate(cert).not_valid_after_utc


class CertSource:
    """The tunnel's certificate, renewed through ``refresh`` when it has expired or is about to.

    ``refresh`` returns a new (certificate, key) or raises a PteleportError whose message
    says what to do (e.g. "your ptsh login expired; run ..."). A failed renewal is only a
    warning while the certificate still works; once it has expired, it is the refusal
    every new client gets.
    """

    def __init__(
        self,
        cert: bytes,
        key: bytes,
        host_cas: bytes,
        refresh: Callable[[], tuple[bytes, bytes]] | None = None,
        *,
        on_warning: Callable[[str], None] | None = None,
        clock: Callable[[], datetime] = _utc_now,
        expires: datetime | None = None,
    ) -> None:
        """``expires``: the certificate's end, when the caller knows it (else it is read from ``cert``)."""
        self.host_cas = host_cas
        self.refresh = refresh
        self.on_warning = on_warning
        self.clock = clock
        self._set(cert, key, expires)
        self._next_attempt = self.clock()
        self._finished = 0  # renewal attempts completed
        self._failure: PteleportError | None = None
        self._warned = ""
        self._lock: asyncio.Lock | None = None

    def _set(self, cert: bytes, key: bytes, expires: datetime | None = None) -> None:
        self._ctx = client_context(cas=self.host_cas, cert=cert, key=key, alpn=[ALPN_POSTGRES])
        self.expires = expires if expires is not None else _not_after(cert)

    def context(self) -> ssl.SSLContext:
        return self._ctx

    def expired(self) -> bool:
        return self.clock() >= self.expires

    def _due(self) -> bool:
        if self.refresh is None:
            return False
        now = self.clock()
        return now >= self.expires or (self.expires - now < RENEW_BEFORE and now >= self._next_attempt)

    def renew(self) -> None:
        """Ask for a new certificate now (blocking); raises the refusal as a PteleportError."""
        if self.refresh is None:
            return
        try:
            cert, key = self.refresh()
        except PteleportError:
            raise
        except Exception as exc:
            raise InternalError(f"could not renew the tunnel's certificate: {exc}") from exc
        self._set(cert, key)

    async def current(self) -> ssl.SSLContext:
        """The context to dial with, renewed first when it is due; raises when it cannot be used."""
        if not self._due():
            return self._ctx
        if self._lock is None:
            self._lock = asyncio.Lock()
        seen = self._finished
        async with self._lock:
            if not self._due():
                return self._ctx
            if self._finished != seen and self._failure is not None and self.expired():
                raise self._failure  # the attempt that was under way when this client came failed
            self._next_attempt = self.clock() + RENEW_INTERVAL
            try:
                await asyncio.to_thread(self.renew)
            except PteleportError as err:
                self._failure = err
                if self.expired():
                    raise
                if self.on_warning is not None and err.message != self._warned:
                    self._warned = err.message
                    self.on_warning(f"could not renew the tunnel's certificate (it expires at "
                                    f"{self.expires:%H:%M:%S} UTC): {err.message}")
            else:
                self._failure = None
                self._warned = ""
            finally:
                self._finished += 1
            return self._ctx


class _Upstream(Connection):
    """The mTLS connection to the proxy; remembers why it was lost (a TLS alert, say)."""

    def __init__(self) -> None:
        super().__init__()
        self.error: BaseException | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.error = exc
        super().connection_lost(exc)


@dataclass
class _Parked:
    """A session opened by ``preflight``, waiting for the client it was opened for."""

    params: dict[str, str]
    upstream: _Upstream
    greeting: bytes  # the server's answer up to and including ReadyForQuery

    def discard(self) -> None:
        self.upstream.write(TERMINATE)  # end the session cleanly
        self.upstream.close()


class LocalTunnel:
    def __init__(
        self,
        proxy_host: str,
        proxy_port: int,
        certs: CertSource,
        on_error: Callable[[str], None] | None = None,
        relogin: str | None = None,
    ) -> None:
        self.proxy_host = proxy_host
        self.proxy_port = proxy_port
        self.certs = certs
        self.on_error = on_error
        self.relogin = relogin or f"run `ptsh login --proxy={self.proxy_addr}`"
        self.trouble = ProxyTrouble(self.proxy_addr, self.relogin)
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._parked: _Parked | None = None

    @property
    def proxy_addr(self) -> str:
        host = f"[{self.proxy_host}]" if ":" in self.proxy_host else self.proxy_host
        return f"{host}:{self.proxy_port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0, sock: Any = None) -> int:
        """Serve on ``host:port``, or on ``sock`` (a listening socket bound already); the port."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            self.server = await loop.create_server(lambda: _Accepted(self), sock=sock)
        else:
            self.server = await loop.create_server(lambda: _Accepted(self), host, port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self._parked is not None:
            self._parked.discard()
            self._parked = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def preflight(self, params: dict[str, str]) -> None:
        """Open a session with ``params`` now; raise what stops it (exit codes from its SQLSTATE).

        Unreachable proxy, no agent for the database, a database the agent cannot reach: a
        ConnectionProblem (exit 5); pteleport's refusals keep their kind (access denied: exit
        4). A refusal by PostgreSQL itself (no such database, pg_hba.conf) is left to psql,
        which then reports it as it would connected directly. The session is kept for the
        first client that sends the same startup parameters.
        """
        upstream = await self._dial(await self.certs.current())
        upstream.write(startup_packet(params))
        greeting = Greeting(self.trouble)
        try:
            while True:
                head = await asyncio.wait_for(upstream.read_exactly(5), GREETING_TIMEOUT)
                payload = await asyncio.wait_for(upstream.read_exactly(greeting.payload_length(head)), GREETING_TIMEOUT)
                if (done := greeting.take(head, payload)) is not None:
                    break
            if not done:  # PostgreSQL's own refusal: psql shows it, as connected directly
                upstream.close()
                return
        except TimeoutError:
            upstream.close()
            raise self.trouble.no_greeting() from None
        except ConnectionError:
            upstream.close()
            raise self.trouble.closed_without_answer(upstream.error) from None
        except PteleportError:
            upstream.close()
            raise
        self._parked = _Parked(params, upstream, bytes(greeting.data))

    def _take_parked(self, first: bytes) -> _Parked | None:
        parked, self._parked = self._parked, None
        if parked is None:
            return None
        if startup_params(first) == parked.params and not parked.upstream._eof:
            return parked
        parked.discard()  # this client asked for something else: it gets its own session
        return None

    def _spawn(self, conn: Connection) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, client: Connection) -> None:
        try:
            first = await self._negotiate(client)
        except ConnectionError:
            client.close()
            return
        except PteleportError as err:
            self._refuse(client, err)
            return
        parked = self._take_parked(first)
        if parked is not None:
            client.write(parked.greeting)
            await splice(client, parked.upstream)
            return
        try:
            upstream = await self._dial(await self.certs.current())
            upstream.write(first)
            if not is_cancel(first) and not await upstream.wait_data():
                raise self.trouble.closed_without_answer(upstream.error)
        except PteleportError as err:
            self._refuse(client, err)
            return
        await splice(client, upstream)

    def _refuse(self, client: Connection, err: PteleportError) -> None:
        if self.on_error is not None:
            self.on_error(err.message)
        client.write(refusal(err))
        client.close()

    async def _negotiate(self, client: Connection) -> bytes:
        """Answer SSLRequest/GSSENCRequest with N (psql sends at most one of each); return the startup packet."""
        requests = 0
        try:
            while (rest := startup_rest(head := await asyncio.wait_for(client.read_exactly(8), 60), requests)) is None:
                requests += 1
                client.write(b"N")
            return head + await asyncio.wait_for(client.read_exactly(rest), 60)
        except TimeoutError:
            raise BadParameter(NO_STARTUP) from None

    async def _dial(self, ctx: ssl.SSLContext) -> _Upstream:
        conn = _Upstream()
        try:
            await open_tls(conn, self.proxy_host, self.proxy_port, ctx, INTERNAL_SNI, DIAL_TIMEOUT)
        except OSError as exc:  # (ssl.SSLError and TimeoutError among them)
            raise self.trouble.dial_failed(exc) from None
        return conn


class _Accepted(Connection):
    def __init__(self, tunnel: LocalTunnel) -> None:
        super().__init__()
        self.tunnel = tunnel

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.tunnel._spawn(self)
