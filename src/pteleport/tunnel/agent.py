"""Agent end of the reverse tunnel: dial out to the proxy, stay connected, answer dials.

States: connecting -> connected -> (lost) -> waiting (backoff with jitter) -> connecting.
The backoff (``common.backoff``: its random source and sleep) is injected so tests can
drive reconnects.

When the proxy asks for a pool (``pool`` line on the control link), the agent keeps that
many *spare* data links open, so a new session starts without a round trip on the
control link and a TLS handshake; each spare that is used is replaced at once.

When the proxy offers ``mux`` (before ``pool``), the agent opens one *mux link* instead
(``tunnel.mux``): every session is a stream the proxy opens on it, and no spares are kept.
The link is reopened (with backoff) while the control link is up; when the control link
goes, it takes no new sessions and closes once its sessions have ended.

An agent that stops says ``bye`` on the control link, so the proxy refuses its database at
once instead of waiting for a redial (``TunnelServer``'s arrivals).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable

from common.backoff import Backoff
from common.relay import Connection
from common.tls import INTERNAL_SNI
from pteleport.tunnel.mux import MuxLink, MuxStream
from pteleport.tunnel.protocol import encode, read_message

log = logging.getLogger("pteleport.tunnel.agent")

HEARTBEAT_EVERY = 10.0
BACKOFF_MIN = 0.25
BACKOFF_MAX = 10.0
MAX_POOL = 16


async def dial_tls(host: str, port: int, ctx: ssl.SSLContext, timeout: float = 10.0) -> Connection:
    loop = asyncio.get_running_loop()
    _transport, conn = await asyncio.wait_for(
        loop.create_connection(
            Connection, host, port, ssl=ctx, server_hostname=INTERNAL_SNI, ssl_handshake_timeout=timeout
        ),
        timeout,
    )
    return conn


class TunnelAgent:
    def __init__(
        self,
        proxy_host: str,
        proxy_port: int,
        ssl_context: ssl.SSLContext,
        hostname: str,
        databases: Callable[[], list[str]],
        on_session: Callable[[Connection], Awaitable[None]],
        on_control: Callable[[dict], None] | None = None,
        backoff: Callable[[], Backoff] | None = None,
    ) -> None:
        self.proxy_host = proxy_host
        self.proxy_port = proxy_port
        self.ssl_context = ssl_context
        self.hostname = hostname
        self.databases = databases
        self.on_session = on_session
        self.on_control = on_control
        self._backoff = backoff or (lambda: Backoff(BACKOFF_MIN, BACKOFF_MAX))
        self.state = "connecting"
        self.connected = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._control: Connection | None = None

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self) -> None:
        backoff = self._backoff()
        while True:
            self.state = "connecting"
            try:
                control = await dial_tls(self.proxy_host, self.proxy_port, self.ssl_context)
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                self.state = "waiting"
                delay = backoff.next_delay()
                log.warning(
                    "cannot reach the proxy at %s:%s (%s); retrying in %.1fs",
                    self.proxy_host,
                    self.proxy_port,
                    exc,
                    delay,
                )
                await backoff.sleep(delay)
                continue
            self.state = "connected"
            self.connected.set()
            log.info("connected to the proxy at %s:%s", self.proxy_host, self.proxy_port)
            since = time.monotonic()
            await self._serve(control)
            self.connected.clear()
            self.state = "waiting"
            if time.monotonic() - since >= HEARTBEAT_EVERY:
                backoff.reset()  # a link that stayed up: come back quickly; one that flaps: slow down
            log.warning("lost the connection to the proxy; reconnecting")
            await backoff.wait()

    def announce(self) -> None:
        """Tell the proxy now (not at the next heartbeat) that the set of databases changed."""
        if self._control is not None:
            self._control.write(encode({"type": "heartbeat", "databases": self.databases()}))

    async def _serve(self, control: Connection) -> None:
        control.write(encode({"type": "hello", "hostname": self.hostname, "databases": self.databases()}))
        self._control = control
        loop = asyncio.get_running_loop()
        beat = loop.create_task(self._heartbeat(control))
        slots: list[asyncio.Task[None]] = []
        try:
            while True:
                message = await read_message(control)
                if message["type"] == "dial":
                    self._spawn(self._open_data(str(message["dial_id"])))
                elif message["type"] == "mux" and not slots:
                    slots = [loop.create_task(self._mux_link(control))]
                elif message["type"] == "pool" and not slots:
                    size = min(max(int(message.get("size", 0)), 0), MAX_POOL)
                    slots = [loop.create_task(self._spare_slot(control)) for _ in range(size)]
                elif self.on_control is not None:
                    self.on_control(message)
        except (ConnectionError, ValueError, TypeError):
            pass
        finally:
            self._control = None
            beat.cancel()
            for slot in slots:
                slot.cancel()
            control.close()

    async def _heartbeat(self, control: Connection) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY)
            control.write(encode({"type": "heartbeat", "databases": self.databases()}))

    async def _open_data(self, dial_id: str) -> None:
        try:
            conn = await dial_tls(self.proxy_host, self.proxy_port, self.ssl_context)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            log.warning("could not open a session link to the proxy: %s", exc)
            return
        conn.write(encode({"type": "data", "dial_id": dial_id}))
        await self._run_session(conn)

    async def _run_session(self, conn: Connection) -> None:
        try:
            await self.on_session(conn)
        except Exception:
            log.exception("session failed")
        finally:
            conn.close()

    async def _mux_link(self, control: Connection) -> None:
        """Keep one mux link open while ``control`` is up; sessions arrive on it as streams."""
        backoff = self._backoff()
        while not control.closed.done():
            try:
                conn = await dial_tls(self.proxy_host, self.proxy_port, self.ssl_context)
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                log.debug("could not open a mux link to the proxy: %s", exc)
                await backoff.wait()
                continue
            conn.write(encode({"type": "mux"}))
            mux = MuxLink.take_over(conn, self._on_stream)
            if mux is None:  # the proxy closed it at once
                await backoff.wait()
                continue
            since = time.monotonic()
            self._spawn(mux.ping())  # (ends with the link)
            try:
                await asyncio.wait({mux.closed, control.closed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                mux.retire()  # the sessions on it go on; it takes no new ones
            if not control.closed.done():
                log.warning("the mux link to the proxy closed; reopening it")
                if time.monotonic() - since >= HEARTBEAT_EVERY:
                    backoff.reset()  # as for the control link: a link that flaps waits longer each time
                await backoff.wait()

    def _on_stream(self, stream: MuxStream) -> None:
        self._spawn(self._run_session(Connection.attach(stream)))

    async def _spare_slot(self, control: Connection) -> None:
        """Keep one spare data link open while ``control`` is up; replace it once it is used."""
        backoff = self._backoff()
        failed = False
        while not control.closed.done():
            if failed:
                await backoff.wait()
            try:
                conn = await dial_tls(self.proxy_host, self.proxy_port, self.ssl_context)
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                failed = True
                log.debug("could not open a spare link to the proxy: %s", exc)
                continue
            conn.write(encode({"type": "spare"}))
            used = asyncio.get_running_loop().create_task(conn.wait_data())
            try:
                await asyncio.wait({used, control.closed}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                conn.close()
                raise
            finally:
                if not used.done():
                    used.cancel()
            if not used.done() or used.cancelled() or used.exception() is not None or not used.result():
                conn.close()  # unused: the proxy dropped it, or the control link is gone
                failed = True
                continue
            failed = False
            backoff.reset()
            self._spawn(self._run_session(conn))

    async def stop(self) -> None:
        """Stop for good: say ``bye`` on the control link (if up), end the session tasks.

        The caller cancels ``run()``, which closes the control link after what was written.
        A tunnel that is only replaced (its task cancelled, no ``stop``) says nothing, so the
        proxy still waits for the replacement.
        """
        if self._control is not None:
            self._control.write(encode({"type": "bye"}))
        for task in list(self._tasks):
            task.cancel()
