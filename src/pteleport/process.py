"""Composition root: builds every object from the config and runs the enabled services.

Concrete choices (SQLite or PostgreSQL backend, which audit log, the clock, the auth
service in a process of its own) are made here and in ``authworker``, nowhere else.

Signals (docs/operations.md): SIGHUP re-reads the config file, reopens the log and applies
what can change while running (``reloading``); SIGTERM or SIGINT drains: no new sessions,
open ones get ``teleport.shutdown_timeout``, then end with FATAL 57P01; a second one stops
at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import logging
import os
import signal
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.addresses import split_host_port
from common.durations import parse_duration
from common.errors import BadParameter
from common.identity_file import IdentityFile, render, write_private
from common.tls import generate_private_key, private_key_pem
from pteleport import memtrim
from pteleport.authworker import apply_settings, auth_settings, open_storage, prune_audit
from pteleport.config import Config

log = logging.getLogger("pteleport")

ADMIN_IDENTITY = "admin-identity.pem"
PROCESS_FILE = "process.json"
SHUTDOWN_MESSAGE = "the server is shutting down"
AFTER_DRAIN = 1.0  # seconds the agents get to ship the last events of drained sessions


def utc_now() -> datetime:
    return datetime.now(UTC)


def split_addr(addr: str, default_port: int = 3080) -> tuple[str, int]:
    """A listen address: no host means every IPv4 address."""
    host, port = split_host_port(addr, default_port)
    return host or "0.0.0.0", port


class Process:
    """One running pteleport: auth + proxy, and/or a database service.

    ``reread`` (None when started from flags only) reads the config again for SIGHUP.
    """

    def __init__(self, config: Config, reread: Callable[[], Config] | None = None, debug: bool = False) -> None:
        self.config = config
        self.reread = reread
        self.debug = debug
        self.stopping = asyncio.Event()
        self.at_once = asyncio.Event()
        self.listen_port = 0
        self._closers: list = []
        self.proxy: Any = None
        self.tunnel: Any = None
        self.auth: Any = None
        self.worker: Any = None
        self.agent: Any = None

    async def run(self) -> None:
        if self.config.auth_service.enabled or self.config.proxy_service.enabled:
            split_addr(self.config.proxy_service.web_listen_addr)  # a bad --listen: before anything is made
        data_dir = self.config.data_dir
        new = _NewDataDir(data_dir)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        tasks = []
        if self.config.auth_service.enabled or self.config.proxy_service.enabled:
            try:
                await self._start_cluster()
            except OSError as exc:
                await self._undo_start(new)
                if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
                    raise BadParameter(
                        f"cannot listen: {exc.strerror or exc}; stop what uses that port, or pick another address "
                        "(--listen, proxy_service.web_listen_addr, proxy_service.postgres_listen_addr)"
                    ) from None
                raise
            except BaseException:
                await self._undo_start(new)
                raise
        new.keep_if_used()
        if self.config.db_service.enabled:
            from pteleport.dbagent.service import DatabaseAgent

            self.agent = DatabaseAgent(self.config, clock=utc_now)
            tasks.append(loop.create_task(self.agent.run()))
            self._closers.append(self.agent.stop)
        trimmer = loop.create_task(memtrim.run())
        self._closers.append(_async(trimmer.cancel))
        log.info("pteleport is running; press Ctrl+C or send SIGTERM to stop, SIGHUP to reload the config")
        stop = loop.create_task(self.stopping.wait())
        await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
        failed = next((t.exception() for t in tasks if t.done() and t.exception() is not None), None)
        if failed is None:
            await self._drain()
        log.info("stopping")
        for closer in reversed(self._closers):
            with contextlib.suppress(Exception):
                await closer()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if failed is not None:
            raise failed

    # --- signals ------------------------------------------------------------------------------
    def _on_stop_signal(self) -> None:
        if self.stopping.is_set():
            if not self.at_once.is_set():
                log.info("stopping at once: open sessions end now")
            self.at_once.set()
        self.stopping.set()

    async def _drain(self) -> None:
        """No new sessions; open ones get shutdown_timeout, then FATAL 57P01; their events delivered."""
        from pteleport.proxy.drain import drain

        timeout = parse_duration(self.config.teleport.shutdown_timeout).total_seconds()

        async def both(timeout: float) -> None:
            jobs = []
            if self.proxy is not None:
                jobs.append(drain(self.proxy, self.tunnel, timeout, SHUTDOWN_MESSAGE))
            if self.agent is not None and self.agent.ready.is_set():
                jobs.append(self.agent.drain(timeout, SHUTDOWN_MESSAGE))
            await asyncio.gather(*jobs, return_exceptions=True)

        had_sessions = bool(self.proxy is not None and self.proxy.sessions)
        job = asyncio.get_running_loop().create_task(both(0.0 if self.at_once.is_set() else timeout))
        now = asyncio.get_running_loop().create_task(self.at_once.wait())
        await asyncio.wait([job, now], return_when=asyncio.FIRST_COMPLETED)
        now.cancel()
        if not job.done():
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
            await both(0.0)
        if had_sessions:
            await asyncio.sleep(AFTER_DRAIN)  # the agents ship the last events while the API is up

    async def reload(self) -> None:
        """SIGHUP: re-read the config, reopen the log, apply what can change; say what needs a restart."""
        from pteleport import logs
        from pteleport.reloading import changes

        if self.reread is None:
            logs.reload(self.config, self.debug)
            if self.worker is not None:
                self.worker.reload(self.config)
            log.info("reload (SIGHUP): reopened the log; there is no config file to read again (started from flags)")
            return
        try:
            new = await asyncio.to_thread(self.reread)
        except BadParameter as exc:
            log.error("reload (SIGHUP): kept the running config: %s", exc.message)
            return
        applied, restart = changes(self.config, new)
        # Only the reloadable keys are taken; the others keep their running values until a restart.
        merged = _merge_reloadable(self.config, new)
        logs.reload(merged, self.debug)
        if self.auth is not None:
            apply_settings(self.auth.ctx.settings, merged)
        if self.worker is not None:
            self.worker.reload(merged)
        if self.agent is not None and any(k.startswith("db_service.") for k in applied):
            self.agent.reload(merged)
        self.config = merged
        log.info(
            "reload (SIGHUP): reopened the log; applied: %s; needs a restart: %s",
            ", ".join(applied) or "nothing changed",
            ", ".join(restart) or "nothing",
        )

    # --- start-up ---------------------------------------------------------------------------------
    async def _undo_start(self, new: _NewDataDir) -> None:
        """A start that failed (busy port, unreadable certificate...) leaves no half-made
        cluster behind; an existing cluster's data is never touched."""
        for closer in reversed(self._closers):
            with contextlib.suppress(Exception):
                await closer()
        self._closers.clear()
        new.remove()

    async def _start_cluster(self) -> None:
        from common.tls import server_context
        from pteleport.api.offload import new_pool
        from pteleport.auth.server import AuthServer
        from pteleport.ca.authority import self_signed_web_cert
        from pteleport.proxy.listener import PublicListener, build_contexts
        from pteleport.proxy.server import ClusterView, ProxyServer
        from pteleport.tunnel.server import TunnelServer

        cfg = self.config
        if not (cfg.auth_service.enabled and cfg.proxy_service.enabled):
            raise BadParameter("auth_service and proxy_service run together in one process; enable both (or neither)")
        data_dir = cfg.data_dir
        backend, audit = open_storage(cfg)
        self._closers.append(_async(backend.close))
        self._closers.append(_async(audit.close))
        host, port = split_addr(cfg.proxy_service.web_listen_addr)
        public = cfg.proxy_service.public_addrs[0] if cfg.proxy_service.public_addrs else None
        public_addr = public or f"{_public_host(host)}:{port}"
        auth = AuthServer(backend, audit, utc_now, auth_settings(cfg, public_addr))
        await asyncio.to_thread(auth.init_cluster)
        self.auth = auth
        now = utc_now()
        # Web certificate: configured, or self-signed and kept in the data dir.
        if cfg.proxy_service.https_keypairs:
            pair = cfg.proxy_service.https_keypairs[0]
            try:
                web_cert = Path(pair.cert_file).read_bytes()
                web_key = Path(pair.key_file).read_bytes()
            except OSError as exc:
                raise BadParameter(f"cannot read the web certificate or key: {exc}") from None
        else:
            web_cert, web_key = _self_signed(
                data_dir,
                [_public_host(host), "localhost", "127.0.0.1", public_addr.rsplit(":", 1)[0]],
                now,
                self_signed_web_cert,
            )
        host_key = generate_private_key()
        names = sorted({public_addr.rsplit(":", 1)[0], "localhost", "127.0.0.1", _public_host(host)})
        host_cert = auth.certs.sign_host(f"proxy-{cfg.teleport.nodename}", "Proxy", host_key.public_key(), names)
        client_cas = auth.ctx.ca_bundle("user", "host")
        ssl_ctx = build_contexts(web_cert, web_key, host_cert, private_key_pem(host_key), client_cas)

        tunnel = TunnelServer()
        self.tunnel = tunnel
        loop = asyncio.get_running_loop()
        # Storage work of this process (the proxy's audit events, the in-process API of a
        # memory backend) runs in these threads, never on this loop, which relays every
        # database session (docs/design-notes.md).
        workers = new_pool()
        self._closers.append(_async(lambda: workers.shutdown(wait=False)))

        def emit_off_loop(event: str, code: str, **fields: object) -> None:
            loop.run_in_executor(workers, functools.partial(auth.ctx.emit, event, code, **fields))

        cluster = ClusterView(
            ca_cert=lambda t: auth.ctx.ca(t).cert,  # read at start, kept in memory
            refusal=auth.access.refusal_async,
            registered_hosts=auth.databases.registrations.hosts_for,  # memory
            emit=emit_off_loop,
        )
        proxy = ProxyServer(tunnel, cluster, utc_now)
        self.proxy = proxy
        # Agents hear at once that locks or users changed, and fetch the snapshot again.
        auth.access.on_change(lambda state: tunnel.broadcast({"type": "access", "version": state.version}))
        await asyncio.to_thread(auth.databases.registrations.build)
        poll = self._watch_changes(backend, auth)
        for job in (auth.access.run(poll), auth.databases.registrations.run(poll)):
            task = loop.create_task(job)
            self._closers.append(_async(task.cancel))
        in_process = cfg.teleport.storage.type == "memory"  # a memory backend cannot be shared
        if in_process:
            http_factory = await self._api_in_process(auth, public_addr, workers, not cfg.proxy_service.https_keypairs)
        else:
            from pteleport.authworker import AuthWorker

            async def changed(what: str) -> None:
                if what == "access":
                    await asyncio.to_thread(auth.access.changed)
                elif what == "registrations":
                    await asyncio.to_thread(auth.databases.registrations.build)

            worker = AuthWorker(cfg, public_addr, changed)
            http_factory = worker.http_factory
        # PostgreSQL's own protocol on the same port: TLS with the host certificate whatever
        # the client's SNI (psql sends the proxy's name or none), client certificates from
        # the user CA, checked by the proxy as on the ALPN route.
        native_tls = server_context(host_cert, private_key_pem(host_key), client_cas=auth.ctx.ca_bundle("user"))
        listener = PublicListener(
            ssl_ctx,
            http_factory,
            proxy.handle_postgres,  # type: ignore[arg-type]
            proxy.handle_tunnel,  # type: ignore[arg-type]
            native=lambda conn: proxy.handle_native(conn, native_tls),
        )
        self.listen_port = await listener.start(host, port)
        self._closers.append(listener.stop)
        self._register_proxy(backend, tunnel, host)  # before any agent's hello can be read
        if cfg.proxy_service.postgres_listen_addr:
            await self._start_native_postgres(
                proxy,
                cfg.proxy_service.postgres_listen_addr,
                host_cert,
                private_key_pem(host_key),
                auth.ctx.ca_bundle("user"),
            )
        actual = f"{host}:{self.listen_port}"
        if port == 0:
            auth.ctx.settings.public_addr = public or f"{_public_host(host)}:{self.listen_port}"
        if not in_process:
            worker.public_addr = auth.ctx.settings.public_addr
            self._closers.append(worker.stop)
            await worker.start()
            self.worker = worker
        else:
            prune = loop.create_task(prune_audit(audit, lambda: auth.ctx.settings.audit_retention))
            self._closers.append(_async(prune.cancel))
        self._write_admin_identity(auth, actual)
        log.info(
            "cluster %s: proxy listening on %s (public address %s)",
            auth.cluster_name,
            actual,
            auth.ctx.settings.public_addr,
        )
        print(f"pteleport: cluster {auth.cluster_name} is listening on https://{actual}", flush=True)

    def _watch_changes(self, backend, auth) -> float:  # type: ignore[no-untyped-def]
        """Wake the access snapshot, the registration index and the proxy set on the backend's
        change feed (LISTEN/NOTIFY on PostgreSQL); their polling becomes a safety net only.
        Returns how often they still poll."""
        import pteleport.auth.access as access
        from pteleport.services.changes import ChangeWatcher

        watcher = ChangeWatcher(backend)
        watcher.subscribe(access.FEED_KINDS, auth.access.poke)
        watcher.subscribe(("db_servers",), auth.databases.registrations.poke)
        self._proxies_wake = asyncio.Event()
        watcher.subscribe(("proxies",), self._proxies_wake.set)
        # Agents re-read the dynamic `db` resources now, not at their next 5 s refresh.
        watcher.subscribe(("db",), lambda: self.tunnel.broadcast({"type": "resources"}) if self.tunnel else None)
        if not watcher.start(asyncio.get_running_loop()):
            return access.REFRESH_EVERY
        self._closers.append(_async(watcher.stop))
        return access.FEED_REFRESH_EVERY

    def _register_proxy(self, backend, tunnel, listen_host: str) -> None:  # type: ignore[no-untyped-def]
        """Announce this proxy in the backend (heartbeat with expiry) and tell agents the set.

        Agents keep a tunnel to every proxy in it (the agent mesh, docs/ha.md); each dials
        the proxy's ``advertise_addr`` (default: the listen address).
        """
        from common import __version__
        from pteleport.auth.proxies import ProxyRegistry, ProxyServer

        cfg = self.config
        adv_host, adv_port = split_addr(cfg.proxy_service.advertise_addr or f"{_public_host(listen_host)}:0")
        me = ProxyServer.make(
            _host_uuid(cfg.data_dir),
            cfg.teleport.nodename or socket.gethostname(),
            f"{adv_host}:{adv_port or self.listen_port}",
            __version__,
        )
        tunnel.set_proxies(me.host_id, [me.tunnel_entry()])
        registry = ProxyRegistry(backend, utc_now)

        def on_set(proxies: list[ProxyServer]) -> None:
            tunnel.set_proxies(me.host_id, [p.tunnel_entry() for p in proxies])

        task = asyncio.get_running_loop().create_task(registry.run(me, on_set, getattr(self, "_proxies_wake", None)))

        async def withdraw() -> None:
            task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.to_thread(registry.withdraw, me.host_id)

        self._closers.append(withdraw)
        log.info("proxy %s advertises %s to agents", me.host_id, me.addr)

    async def _api_in_process(self, auth, public_addr: str, workers, self_signed: bool) -> Callable[[], asyncio.Protocol]:  # type: ignore[no-untyped-def]
        """The API on this loop, its work in ``workers`` (memory backend only)."""
        from aiohttp import web

        from pteleport.api.app import ProxyInfo, build_app

        app = build_app(auth, ProxyInfo(public_addr, web_cert_self_signed=self_signed), workers)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._closers.append(runner.cleanup)
        return runner.server  # type: ignore[return-value]

    async def _start_native_postgres(self, proxy, addr: str, cert: bytes, key: bytes, user_ca: bytes) -> None:  # type: ignore[no-untyped-def]
        from common.relay import Connection
        from common.tls import server_context

        tls = server_context(cert, key, client_cas=user_ca, client_auth="required")
        pg_host, pg_port = split_addr(addr, 5432)
        tasks: set[asyncio.Task[None]] = set()

        def accept() -> Connection:
            conn = Connection()
            loop = asyncio.get_running_loop()

            def start() -> None:
                task = loop.create_task(proxy.handle_native(conn, tls))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

            loop.call_soon(start)
            return conn

        server = await asyncio.get_running_loop().create_server(accept, pg_host, pg_port, reuse_address=True)
        self.postgres_port = server.sockets[0].getsockname()[1]

        async def close() -> None:
            server.close()
            for task in list(tasks):
                task.cancel()

        self._closers.append(close)
        log.info("native postgres listener on %s:%s", pg_host, self.postgres_port)

    def _write_admin_identity(self, auth, listen_addr: str) -> None:  # type: ignore[no-untyped-def]
        """pctl on this host reads this file (0600) to act as the cluster admin."""
        key = generate_private_key()
        cert = auth.admin_identity_cert(key.public_key())
        host, port = split_addr(listen_addr)
        addr = f"{_public_host(host)}:{port}"
        cas = auth.ctx.ca_bundle("host", "user", "db")
        data_dir = self.config.data_dir
        write_private(
            data_dir / ADMIN_IDENTITY, render(IdentityFile(private_key_pem(key), cert, cas, addr, auth.cluster_name))
        )
        write_private(
            data_dir / PROCESS_FILE,
            json.dumps(
                {
                    "pid": os.getpid(),
                    "proxy": addr,
                    "public_addr": auth.ctx.settings.public_addr,
                    "cluster_name": auth.cluster_name,
                }
            ).encode(),
        )


class _NewDataDir:
    """Makes the data dir if needed, and knows what this run made, to undo it on a failed start.

    Only a directory that did not exist, or was empty, counts as new: a failed start removes
    what it put there (the directory too, with any parents it had to make, if it made
    it). A directory that already held something is an existing cluster and is never
    cleaned.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        existing = next(p for p in (path, *path.parents) if p.exists())  # "/" or "." at the latest
        # The topmost directory this run creates (None: the data dir exists already).
        self.made = None if existing == path else existing / path.relative_to(existing).parts[0]
        self.was_empty = self.made is None and path.is_dir() and not any(path.iterdir())
        path.mkdir(parents=True, exist_ok=True, mode=0o700)

    def remove(self) -> None:
        import shutil

        try:
            if self.made is not None:
                shutil.rmtree(self.made)
            elif self.was_empty:
                for child in self.path.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        except OSError as exc:
            log.warning("could not remove the half-made data dir %s: %s", self.path, exc)

    def keep_if_used(self) -> None:
        """Start-up went through: from now on the directory is the cluster's."""
        self.made, self.was_empty = None, False


def _host_uuid(data_dir: Path) -> str:
    """This process's host id, made at the first start and kept in ``data_dir/host_uuid``."""
    import uuid

    path = data_dir / "host_uuid"
    try:
        value = path.read_text().strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    value = str(uuid.uuid4())
    path.write_text(value + "\n")
    return value


def _public_host(host: str) -> str:
    if host in ("0.0.0.0", "", "::"):
        return socket.gethostname() if host else "localhost"
    return host


def _self_signed(data_dir: Path, hosts: list[str], now: datetime, make) -> tuple[bytes, bytes]:  # type: ignore[no-untyped-def]
    cert_path, key_path = data_dir / "webproxy_cert.pem", data_dir / "webproxy_key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path.read_bytes(), key_path.read_bytes()
    cert, key = make(sorted(set(hosts)), now)
    write_private(key_path, key)
    write_private(cert_path, cert)
    return cert, key


def _async(fn):  # type: ignore[no-untyped-def]
    async def call() -> None:
        fn()

    return call


def _merge_reloadable(old: Config, new: Config) -> Config:
    """The running config with only the reloadable keys taken from ``new`` (the rest waits for a restart)."""
    from pteleport.config import parse_config
    from pteleport.reloading import flatten, reloadable

    doc = old.model_dump(mode="json")
    fresh = flatten(new.model_dump(mode="json"))
    for key, value in fresh.items():
        if reloadable(key):
            _set(doc, key.split("."), value)
    return parse_config(doc, "config")


def _set(doc: dict, path: list[str], value: Any) -> None:
    for part in path[:-1]:
        doc = doc.setdefault(part, {})
    doc[path[-1]] = value
