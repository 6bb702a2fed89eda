"""The local tunnel's refusals reach psql as sentences (ptsh/tunnel.py), on asyncio and uvloop.

In-process: a LocalTunnel and a TLS "proxy" that checks client certificates as the real one
does (common.tls.server_context, so refusals carry their TLS alert), with the real psql as
the client. psql must print the sentence and exit non-zero for: a certificate that expired
and cannot be renewed ("your ptsh login expired; run `ptsh login --proxy=...`"), the proxy
refusing the certificate (its alert in words), a proxy that is down, and a client that
does not speak PostgreSQL. An expired certificate that can be renewed is renewed when the
client arrives. The end-to-end tests (real daemon, agent, PostgreSQL, ptsh) are at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import subprocess
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from common.errors import NotLoggedIn
from common.tls import ALPN_POSTGRES, INTERNAL_SNI, server_context
from tests.harness import PTSH, Cluster, find_url, free_port, invite_token, run
from tests.pgserver import ThrowawayCA
from tests.test_tls_alerts import expired_cert, wait_expired


class LoopThread:
    """An event loop (asyncio's or uvloop's) on its own thread."""

    def __init__(self, name: str) -> None:
        if name == "uvloop":
            uvloop = pytest.importorskip("uvloop")
            self.loop = uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class _FakeProxy(asyncio.Protocol):
    """Past the certificate check, answers any startup packet with one ErrorResponse."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        fields = b"SFATAL\x00C42000\x00Mthe proxy accepted the certificate\x00\x00"
        self.transport.write(b"E" + struct.pack("!i", len(fields) + 4) + fields)  # type: ignore[attr-defined]
        self.transport.close()


@dataclass
class World:
    lt: LoopThread
    proxy_port: int
    user_ca: ThrowawayCA
    host_cas: bytes
    closers: list[Any] = field(default_factory=list)

    def tunnel(self, cert: bytes, key: bytes, refresh: Any = None, proxy_port: int | None = None) -> int:
        from ptsh.tunnel import CertSource, LocalTunnel

        async def start() -> int:
            source = CertSource(cert, key, self.host_cas, refresh)
            tunnel = LocalTunnel("127.0.0.1", proxy_port or self.proxy_port, source)
            self.closers.append(tunnel.close)
            return await tunnel.start()

        return self.lt.run(start())


@pytest.fixture(params=["asyncio", "uvloop"])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    lt = LoopThread(request.param)
    user_ca, host_ca = ThrowawayCA.create("user CA"), ThrowawayCA.create("host CA")
    proxy_cert, proxy_key = host_ca.issue("proxy", [INTERNAL_SNI], server=True)
    ctx = server_context(proxy_cert, proxy_key, client_cas=user_ca.cert_pem, client_auth="required",
                         alpn=[ALPN_POSTGRES])

    async def start() -> asyncio.base_events.Server:
        return await asyncio.get_running_loop().create_server(_FakeProxy, "127.0.0.1", 0, ssl=ctx)

    server = lt.run(start())
    w = World(lt, server.sockets[0].getsockname()[1], user_ca, host_ca.cert_pem)
    try:
        yield w
    finally:
        for close in w.closers:
            lt.run(close())
        server.close()
        lt.close()


def psql(port: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run(
        ["psql", f"host=127.0.0.1 port={port} user=alice dbname=postgres connect_timeout=20", "-c", "select 1"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=env,
    )


def test_an_expired_certificate_that_cannot_be_renewed(world: World) -> None:
    proxy = f"127.0.0.1:{world.proxy_port}"

    def refresh() -> tuple[bytes, bytes]:
        raise NotLoggedIn(f"your ptsh login expired; run `ptsh login --proxy={proxy}`")

    port = world.tunnel(*expired_cert(world.user_ca, "alice"), refresh=refresh)
    result = psql(port)
    assert result.returncode == 2
    assert f"FATAL:  your ptsh login expired; run `ptsh login --proxy={proxy}`" in result.stderr, result.stderr


def test_an_expired_certificate_is_renewed_when_a_client_arrives(world: World) -> None:
    renewed = world.user_ca.issue("alice")
    calls: list[int] = []

    def refresh() -> tuple[bytes, bytes]:
        calls.append(1)
        return renewed

    port = world.tunnel(*expired_cert(world.user_ca, "alice"), refresh=refresh)
    first, second = psql(port), psql(port)
    assert "the proxy accepted the certificate" in first.stderr, first.stderr
    assert "the proxy accepted the certificate" in second.stderr, second.stderr
    assert len(calls) == 1  # the renewed certificate is used from then on


def test_clients_that_arrive_together_share_one_renewal() -> None:
    """Five clients at once with an expired certificate: one attempt; a client after it: a new one."""
    import time

    from ptsh.tunnel import CertSource

    ca = ThrowawayCA.create("user CA")
    calls: list[int] = []

    def refresh() -> tuple[bytes, bytes]:
        calls.append(1)
        time.sleep(0.2)
        raise NotLoggedIn("your ptsh login expired; run `ptsh login --proxy=example:3080`")

    source = CertSource(*expired_cert(ca, "alice"), ca.cert_pem, refresh)

    async def arrive() -> tuple[list[Any], int, list[Any]]:
        together = await asyncio.gather(*(source.current() for _ in range(5)), return_exceptions=True)
        attempts = len(calls)
        later = await asyncio.gather(source.current(), return_exceptions=True)  # e.g. after ptsh login
        return together, attempts, later

    together, attempts, later = asyncio.run(arrive())
    assert attempts == 1
    assert all(isinstance(r, NotLoggedIn) and "your ptsh login expired" in r.message for r in together)
    assert len(calls) == 2 and isinstance(later[0], NotLoggedIn)


def test_the_proxy_refusing_the_certificate_is_translated(world: World) -> None:
    proxy = f"127.0.0.1:{world.proxy_port}"
    expired = world.tunnel(*expired_cert(world.user_ca, "alice"))  # nothing to renew it with
    result = psql(expired)
    assert result.returncode == 2
    assert ("FATAL:  the cluster refused your certificate because it has expired; "
            f"run `ptsh login --proxy={proxy}`") in result.stderr, result.stderr
    foreign = world.tunnel(*ThrowawayCA.create("another cluster").issue("alice"))
    result = psql(foreign)
    assert result.returncode == 2
    assert "FATAL:  the cluster refused your certificate: it was not issued by this cluster" in result.stderr


def test_a_proxy_that_is_down(world: World) -> None:
    down = free_port()
    port = world.tunnel(*world.user_ca.issue("alice"), proxy_port=down)
    result = psql(port)
    assert result.returncode == 2
    assert f"FATAL:  cannot reach the proxy at 127.0.0.1:{down} (Connection refused); check that" in result.stderr


def _answer(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(4096):
            out += chunk
    return out


def test_a_client_that_does_not_speak_postgres(world: World) -> None:
    port = world.tunnel(*world.user_ca.issue("alice"))
    http = _answer(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert http.startswith(b"E") and b"C08P01\x00" in http and b"did not send a PostgreSQL startup" in http
    ssl_request = struct.pack("!ii", 8, 80877103)
    many = _answer(port, ssl_request * 3)
    assert many.startswith(b"NNE") and b"C08P01\x00" in many and b"more than two encryption requests" in many



# --- end to end: the daemon, an agent, PostgreSQL, ptsh --------------------------------------------------------

PASSWORD = "correct horse battery staple"


@dataclass
class Site:
    env: Any  # tests.dbenv.DbEnv
    home: Path

    def ptsh(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run([PTSH, *args], self.env.cluster.env(PTSH_HOME=self.home), input=input)

    def login(self, *args: str) -> None:
        result = self.ptsh("login", f"--proxy={self.env.cluster.addr}", "--user=alice", "--insecure",
                           "--password-stdin", *args, input=PASSWORD + "\n")
        assert result.returncode == 0, result.stderr

    def login_expires(self) -> Path:
        (cert,) = self.home.rglob("alice.crt")
        return cert

    @contextlib.contextmanager
    def tunnel(self) -> Iterator[tuple[int, subprocess.Popen[str]]]:
        port = free_port()
        proc = subprocess.Popen(
            [PTSH, "proxy", "db", "--tunnel", f"--port={port}", "--db-user=alice", "--db-name=postgres", "aurora"],
            env=self.env.cluster.env(PTSH_HOME=self.home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        try:
            banner = proc.stdout.readline() if proc.stdout else ""
            assert f"127.0.0.1:{port}" in banner, banner + (proc.stderr.read() if proc.stderr else "")
            yield port, proc
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(10)


@pytest.fixture(scope="module")
def site(pg, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    import httpx

    from tests.dbenv import SEED_ROLE, DbEnv

    root = tmp_path_factory.mktemp("tunnel-refusals")
    pg.create_role("alice", "cert")
    env = DbEnv(root, pg, Cluster(root / "cluster", extra_args=["--second-factor", "off"]).start())
    try:
        pg.trust_client_ca(env.pctl("auth", "export", "--type=db-client").stdout.encode())
        assert env.pctl("create", input=SEED_ROLE).returncode == 0
        env.start_agent("aurora")
        added = env.pctl("users", "add", "alice", "--roles=db")
        assert added.returncode == 0, added.stderr
        token = invite_token(find_url(added.stdout))
        with httpx.Client(base_url=env.cluster.url, verify=False, timeout=10) as http:
            assert http.get(f"/v1/invites/{token}").status_code == 200
            done = http.post(f"/v1/invites/{token}", json={"password": PASSWORD})
            assert done.status_code == 200, done.text
        yield Site(env, root / "home-alice")
    finally:
        env.stop()


def tunnel_psql(port: int, sql: str = "select current_user") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run(
        ["psql", f"host=127.0.0.1 port={port} user=alice dbname=postgres connect_timeout=20", "-At", "-c", sql],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=env,
    )


@pytest.mark.slow
def test_a_tunnel_whose_login_expired_tells_psql_to_log_in_again(site: Site) -> None:
    proxy = site.env.cluster.addr
    site.login("--ttl=20s")  # long enough for the first psql on a busy machine
    with site.tunnel() as (port, proc):
        works = tunnel_psql(port)
        assert (works.returncode, works.stdout.strip()) == (0, "alice"), works.stderr
        wait_expired(site.login_expires())
        refused = tunnel_psql(port)
        assert refused.returncode == 2
        # (the hint works as printed: this test cluster's web certificate is self-signed)
        assert f"FATAL:  your ptsh login expired; run `ptsh login --proxy={proxy} --insecure`" in refused.stderr, \
            refused.stderr
        # Logging in again is enough: the running tunnel picks the new login up.
        site.login()
        again = tunnel_psql(port)
        assert (again.returncode, again.stdout.strip()) == (0, "alice"), again.stderr
    assert proc.stderr is not None
    assert f"ERROR: your ptsh login expired; run `ptsh login --proxy={proxy} --insecure`" in proc.stderr.read()


@pytest.mark.slow
def test_db_connect_renews_on_reconnect_and_refuses_once_the_login_expired(site: Site) -> None:
    proxy = site.env.cluster.addr
    site.login("--ttl=15s")  # long enough for the first query on a busy machine
    expires = x509.load_pem_x509_certificate(site.login_expires().read_bytes()).not_valid_after_utc
    wait = max(1.0, (expires - datetime.now(UTC)).total_seconds() + 1)
    result = site.ptsh("db", "connect", "aurora", "--db-user=alice", "--db-name=postgres", "--",
                       "-At", "-c", "select current_user", "-c", f"select pg_sleep({wait:.1f})", "-c", "\\connect",
                       "-c", "select 'still here'")
    assert result.returncode != 0, result.stderr  # psql's own exit code, which ptsh passes on
    assert result.stdout.splitlines()[0] == "alice"
    assert "still here" not in result.stdout
    assert f"FATAL:  your ptsh login expired; run `ptsh login --proxy={proxy} --insecure`" in result.stderr, \
        result.stderr
    site.login()


@pytest.mark.slow
def test_a_tunnel_to_a_proxy_that_is_down(site: Site) -> None:
    site.login()
    cluster = site.env.cluster
    with site.tunnel() as (port, _proc):
        cluster.stop()
        try:
            result = tunnel_psql(port)
        finally:
            cluster.start()
    assert result.returncode == 2
    assert (f"FATAL:  cannot reach the proxy at {cluster.addr} (Connection refused); check that the proxy is running"
            in result.stderr), result.stderr
