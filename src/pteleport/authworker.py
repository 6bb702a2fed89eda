"""The auth service in a process of its own, so that the relays never wait for it.

``pteleport start`` (auth + proxy) runs two processes. The main one holds the public port,
the ALPN router, the proxy and the reverse tunnel; the *auth worker* (``python -m
pteleport.authworker``, started by ``AuthWorker``) runs the HTTPS API: every handler, its
storage, password hashing and JSON. docs/design-notes.md has the measurements behind this.

- **HTTP**: the main process terminates TLS and relays each ``http/1.1`` connection's bytes
  to the worker over a Unix socket in a private directory (0700). The first line on that
  socket is JSON with what the worker cannot see itself: the client's certificate (DER,
  base64) and address. The worker hands the connection to aiohttp with a transport whose
  ``get_extra_info`` answers ``ssl_object`` and ``peername`` from that line, so the API code
  is the same in both processes.
- **Control**: a socketpair, one JSON line per message. Main → worker: ``start`` (the
  config, the public addresses), ``config`` (after SIGHUP), ``reopen_logs``, ``ack``,
  ``stop``. Worker → main: ``ready``, and ``changed`` (``access`` after a lock, user or role
  change; ``registrations`` after a heartbeat), which the main process answers with ``ack``
  once its own snapshot and registration index are rebuilt, so an API call that changed
  them returns only when the proxy routes and refuses by the new state.
- The worker ignores SIGINT, SIGTERM and SIGHUP (a terminal or systemd signals the whole
  group): the main process decides. It exits when told to stop or when the control socket
  closes (the main process is gone, even by SIGKILL).
- The worker runs at a lower CPU priority (``NICE``): when the cores are busy, the relays
  of the main process and the database agents go first, and admin calls wait.

Both processes open the storage; the SQLite and PostgreSQL backends are safe for that. The
memory backend cannot be shared, so with ``storage.type: memory`` the API runs in the main
process (in its worker threads, ``api.offload``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.durations import parse_duration
from common.errors import BadParameter
from common.relay import Connection, splice
from pteleport.config import Config, parse_config

log = logging.getLogger("pteleport.auth.worker")

NICE = 5  # added to the worker's nice value
START_TIMEOUT = 60.0
ACK_TIMEOUT = 5.0
STOP_TIMEOUT = 10.0
PREAMBLE_LIMIT = 64 * 1024
_UNAVAILABLE_BODY = b'{"error": {"message": "the auth service is restarting; try again", "kind": "connection_problem"}}'
UNAVAILABLE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    + f"Content-Length: {len(_UNAVAILABLE_BODY)}\r\n\r\n".encode()
    + _UNAVAILABLE_BODY
)


def utc_now() -> datetime:
    return datetime.now(UTC)


def open_storage(config: Config):  # type: ignore[no-untyped-def]
    """The cluster state backend and the audit log the config names (the one place that chooses)."""
    storage = config.teleport.storage
    data_dir = config.data_dir
    if storage.type == "postgresql":
        from pteleport.audit.log import PostgresAuditLog
        from pteleport.storage.postgres import PostgresBackend

        if not storage.conn_string:
            raise BadParameter("teleport.storage.conn_string is required for the postgresql backend")
        return PostgresBackend(storage.conn_string, clock=utc_now), PostgresAuditLog(storage.conn_string)
    if storage.type == "memory":
        from pteleport.audit.log import MemoryAuditLog
        from pteleport.storage.memory import MemoryBackend

        return MemoryBackend(clock=utc_now), MemoryAuditLog()
    from pteleport.audit.log import SQLiteAuditLog
    from pteleport.storage.sqlite import SQLiteBackend

    path = storage.path or str(data_dir / "backend" / "sqlite.db")
    return SQLiteBackend(path, clock=utc_now), SQLiteAuditLog(str(data_dir / "log" / "events.db"))


def auth_settings(config: Config, public_addr: str):  # type: ignore[no-untyped-def]
    from pteleport.auth.context import AuthSettings

    auth = config.auth_service
    return AuthSettings(
        cluster_name=auth.cluster_name or config.teleport.nodename,
        public_addr=public_addr,
        second_factor=auth.authentication.second_factor,
        max_attempts=auth.lockout.max_attempts,
        lockout=parse_duration(auth.lockout.lockout_duration),
        audit_retention=parse_duration(auth.audit.retention),
        static_tokens=list(auth.tokens),
        iam_sts_override=auth.iam_join.sts_endpoint_override,
    )


def apply_settings(settings: Any, config: Config) -> None:
    """What a reload changes in a running auth service (the rest needs a restart)."""
    new = auth_settings(config, settings.public_addr)
    settings.max_attempts = new.max_attempts
    settings.lockout = new.lockout
    settings.audit_retention = new.audit_retention
    settings.static_tokens = new.static_tokens


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


# --- the main process's side -----------------------------------------------------------------------


class AuthWorker:
    """Starts the worker process, relays HTTP connections to it, answers its notices, restarts it."""

    def __init__(
        self,
        config: Config,
        public_addr: str,
        on_changed: Callable[[str], Awaitable[None]],
        postgres_public_addr: str | None = None,
    ) -> None:
        self.config = config
        self.public_addr = public_addr
        self.postgres_public_addr = postgres_public_addr
        self.on_changed = on_changed
        self._dir = Path(tempfile.mkdtemp(prefix="pteleport-auth-"))  # 0700: only we may connect
        self.socket_path = str(self._dir / "api.sock")
        self._listener: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: Connection | None = None
        self._ready: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None

    # --- life ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the worker and wait until it serves (BadParameter with its reason if it cannot)."""
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.socket_path)
        self._listener.listen(1024)
        await self._spawn()
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def _spawn(self) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        assert self._listener is not None
        fds = (theirs.fileno(), self._listener.fileno())
        cmd = [sys.executable, "-m", "pteleport.authworker", "--control-fd", str(fds[0]), "--listen-fd", str(fds[1])]
        self._proc = subprocess.Popen(cmd, pass_fds=fds, stdin=subprocess.DEVNULL, close_fds=True)
        theirs.close()
        _transport, control = await loop.create_connection(Connection, sock=ours)
        self._control = control
        self._ready = loop.create_future()
        reader = loop.create_task(self._read_control(control, self._ready))
        self._tasks.add(reader)
        reader.add_done_callback(self._tasks.discard)
        control.write(_line(self._start_message()))
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), START_TIMEOUT)
        except TimeoutError:
            raise BadParameter("the auth service did not start in time; see the log above") from None

    def _start_message(self) -> dict[str, Any]:
        from common.cli import DEBUG

        return {
            "type": "start",
            "debug": bool(DEBUG["on"]),
            "config": self.config.model_dump(mode="json"),
            "public_addr": self.public_addr,
            "postgres_public_addr": self.postgres_public_addr,
        }

    async def _read_control(self, control: Connection, ready: asyncio.Future[None]) -> None:
        try:
            while True:
                message = json.loads(await control.read_line())
                kind = message.get("type")
                if kind == "ready" and not ready.done():
                    ready.set_result(None)
                elif kind == "failed" and not ready.done():
                    ready.set_exception(BadParameter(str(message.get("error"))))
                elif kind == "changed":
                    try:
                        await self.on_changed(str(message.get("what")))
                    except Exception as exc:
                        log.warning("could not rebuild after a change in the auth service: %s", exc)
                    control.write(_line({"type": "ack", "id": message.get("id")}))
        except (ConnectionError, ValueError):
            pass
        if not ready.done():
            ready.set_exception(BadParameter("the auth service exited while starting; see the log above"))

    async def _supervise(self) -> None:
        """Restart a worker that died (not one we stopped), with a backoff."""
        from common.backoff import Backoff

        backoff = Backoff(0.5, 10.0)
        while True:
            assert self._proc is not None
            code = await asyncio.to_thread(self._proc.wait)
            if self._stopping:
                return
            delay = backoff.next_delay()
            log.error("the auth service process exited (code %s); starting it again in %.1fs", code, delay)
            await asyncio.sleep(delay)
            if self._stopping:
                return
            try:
                await self._spawn()
                log.info("the auth service process is back")
            except Exception as exc:
                log.error("the auth service did not start again: %s", exc)

    def reload(self, config: Config) -> None:
        """Tell the worker the new config (it applies what can change) and to reopen its log."""
        self.config = config
        if self._control is not None:
            self._control.write(_line({"type": "config", "config": config.model_dump(mode="json")}))

    async def stop(self) -> None:
        self._stopping = True
        if self._control is not None:
            self._control.write(_line({"type": "stop"}))
        proc = self._proc
        if proc is not None:
            try:
                await asyncio.wait_for(asyncio.to_thread(proc.wait), STOP_TIMEOUT)
            except TimeoutError:
                log.warning("the auth service process did not stop in %.0fs; killing it", STOP_TIMEOUT)
                proc.kill()
                await asyncio.to_thread(proc.wait)
        if self._supervisor is not None:
            self._supervisor.cancel()
        if self._control is not None:
            self._control.close()
        for task in list(self._tasks):
            task.cancel()
        if self._listener is not None:
            self._listener.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    # --- HTTP connections -----------------------------------------------------------------------
    def http_factory(self) -> asyncio.Protocol:
        """What the ALPN router hands an ``http/1.1`` connection to: a relay to the worker."""
        return _HttpRelay(self)

    def relay(self, conn: Connection) -> None:
        task = asyncio.get_running_loop().create_task(self._relay(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(self, conn: Connection) -> None:
        der = conn.peer_cert_der()
        host, _, port = conn.peername().rpartition(":")
        try:
            _transport, worker = await asyncio.get_running_loop().create_unix_connection(Connection, self.socket_path)
        except OSError:
            conn.write(UNAVAILABLE)
            conn.close()
            return
        preamble = {"cert": base64.b64encode(der).decode() if der else None, "host": host, "port": int(port or 0)}
        worker.write(_line(preamble))
        await splice(conn, worker)


class _HttpRelay(asyncio.Protocol):
    def __init__(self, worker: AuthWorker) -> None:
        self.worker = worker

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.worker.relay(Connection.attach(transport))


# --- the worker process -----------------------------------------------------------------------------


class _PeerSSL:
    """What the API asks of ``ssl_object``: the client's certificate, as the main process saw it."""

    def __init__(self, der: bytes | None) -> None:
        self._der = der

    def getpeercert(self, binary_form: bool = False) -> Any:
        return self._der if binary_form else None


class _PeerTransport(asyncio.Transport):
    """The Unix socket's transport, answering ``ssl_object`` and ``peername`` for the real client."""

    def __init__(self, inner: asyncio.Transport, der: bytes | None, peer: tuple[str, int]) -> None:
        super().__init__()
        self._inner = inner
        self._extra = {"ssl_object": _PeerSSL(der), "peername": peer, "sslcontext": True}

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in self._extra:
            return self._extra[name]
        return self._inner.get_extra_info(name, default)

    def write(self, data: Any) -> None:
        self._inner.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self._inner.writelines(list_of_data)

    def write_eof(self) -> None:
        self._inner.write_eof()

    def can_write_eof(self) -> bool:
        return self._inner.can_write_eof()

    def close(self) -> None:
        self._inner.close()

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def abort(self) -> None:
        self._inner.abort()

    def pause_reading(self) -> None:
        self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._inner.resume_reading()

    def is_reading(self) -> bool:
        return self._inner.is_reading()

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._inner.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._inner.set_write_buffer_limits(high, low)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._inner.get_protocol()


class _Preamble(asyncio.Protocol):
    """Reads the first line of a relayed connection, then hands it to aiohttp."""

    def __init__(self, factory: Callable[[], asyncio.Protocol]) -> None:
        self.factory = factory
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        if b"\n" not in self.buffer:
            if len(self.buffer) > PREAMBLE_LIMIT:
                self.transport.close()
            return
        line, rest = self.buffer.split(b"\n", 1)
        try:
            info = json.loads(line)
            der = base64.b64decode(info["cert"]) if info.get("cert") else None
            peer = (str(info.get("host", "")), int(info.get("port", 0)))
        except (ValueError, KeyError, TypeError):
            self.transport.close()
            return
        http = self.factory()
        self.transport.set_protocol(http)
        http.connection_made(_PeerTransport(self.transport, der, peer))
        if rest:
            http.data_received(rest)


class _Notifier:
    """Tells the main process of a change and waits (in the caller's thread) until it rebuilt."""

    def __init__(self, loop: asyncio.AbstractEventLoop, control: Connection) -> None:
        self.loop = loop
        self.control = control
        self._ids = itertools.count(1)
        self._waiting: dict[int, threading.Event] = {}
        self._lock = threading.Lock()

    def __call__(self, what: str) -> None:
        number = next(self._ids)
        done = threading.Event()
        with self._lock:
            self._waiting[number] = done
        self.loop.call_soon_threadsafe(self.control.write, _line({"type": "changed", "what": what, "id": number}))
        in_loop = False
        with contextlib.suppress(RuntimeError):
            in_loop = asyncio.get_running_loop() is self.loop
        if not in_loop and not done.wait(ACK_TIMEOUT):
            log.warning("the proxy did not confirm a %s change within %.0fs", what, ACK_TIMEOUT)
        with self._lock:
            self._waiting.pop(number, None)

    def acked(self, number: int) -> None:
        with self._lock:
            done = self._waiting.get(number)
        if done is not None:
            done.set()


async def _serve(control_fd: int, listen_fd: int) -> None:
    from aiohttp import web

    from pteleport import logs, memtrim
    from pteleport.api.app import ProxyInfo, build_app
    from pteleport.auth.server import AuthServer

    loop = asyncio.get_running_loop()
    _transport, control = await loop.create_connection(Connection, sock=socket.socket(fileno=control_fd))
    start = json.loads(await control.read_line())
    config = parse_config(start["config"], "config")
    debug = bool(start.get("debug"))
    logs.setup(config, debug, worker=True)
    closers: list[Callable[[], Any]] = []
    try:
        backend, audit = open_storage(config)
        closers += [backend.close, audit.close]
        auth = AuthServer(backend, audit, utc_now, auth_settings(config, start["public_addr"]))
        await asyncio.to_thread(auth.init_cluster)
        notify = _Notifier(loop, control)
        auth.access.after_change.append(lambda: notify("access"))
        auth.databases.on_registered = lambda: notify("registrations")
        await asyncio.to_thread(auth.access.build)
        await asyncio.to_thread(auth.databases.registrations.build)
        poll = _watch_changes(backend, auth, loop, closers)
        jobs = [loop.create_task(job) for job in (auth.access.run(poll), auth.databases.registrations.run(poll))]
        jobs.append(loop.create_task(prune_audit(audit, lambda: auth.ctx.settings.audit_retention)))
        jobs.append(loop.create_task(memtrim.run()))
        app = build_app(
            auth,
            ProxyInfo(
                start["public_addr"],
                start.get("postgres_public_addr"),
                web_cert_self_signed=not config.proxy_service.https_keypairs,
            ),
        )
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        server = await loop.create_unix_server(lambda: _Preamble(runner.server), sock=socket.socket(fileno=listen_fd))
    except Exception as exc:
        from common.errors import PteleportError

        message = exc.message if isinstance(exc, PteleportError) else f"{type(exc).__name__}: {exc}"
        log.error("the auth service cannot start: %s", message)
        control.write(_line({"type": "failed", "error": message}))
        await asyncio.sleep(0.1)
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                close()
        return
    control.write(_line({"type": "ready"}))
    try:
        while True:
            message = json.loads(await control.read_line())
            kind = message.get("type")
            if kind == "ack":
                notify.acked(int(message.get("id", 0)))
            elif kind == "config":
                config = parse_config(message["config"], "config")
                logs.reload(config, debug, worker=True)
                apply_settings(auth.ctx.settings, config)
            elif kind == "stop":
                break
    except (ConnectionError, ValueError):
        pass  # the main process is gone
    server.close()
    for job in jobs:
        job.cancel()
    await runner.cleanup()
    for close in reversed(closers):
        with contextlib.suppress(Exception):
            close()


def _watch_changes(backend: Any, auth: Any, loop: asyncio.AbstractEventLoop, closers: list) -> float:
    """The worker's snapshot and index wake on the backend's change feed; returns their polling period."""
    import pteleport.auth.access as access
    from pteleport.services.changes import ChangeWatcher

    watcher = ChangeWatcher(backend)
    watcher.subscribe(access.FEED_KINDS, auth.access.poke)
    watcher.subscribe(("db_servers",), auth.databases.registrations.poke)
    if not watcher.start(loop):
        return access.REFRESH_EVERY
    closers.append(watcher.stop)
    return access.FEED_REFRESH_EVERY


async def prune_audit(audit: Any, retention: Callable[[], Any]) -> None:
    """Delete audit events older than the retention, once an hour (the retention may be reloaded)."""
    while True:
        try:
            await asyncio.to_thread(audit.prune, utc_now() - retention())
        except Exception:
            log.exception("pruning the audit log failed")
        await asyncio.sleep(3600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pteleport.authworker")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--listen-fd", type=int, required=True)
    args = parser.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the main process decides (see the module doc)
    with contextlib.suppress(OSError):
        os.nice(NICE)
    try:
        import uvloop  # type: ignore[import-not-found]

        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(_serve(args.control_fd, args.listen_fd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
