"""A refused TLS handshake reaches the client as the matching TLS alert (common/tls_alerts.py).

Against a real daemon: ``openssl s_client`` on the one public port and ``psql`` on the
native PostgreSQL listener see "certificate expired", "unknown ca" and, for a certificate
whose subject was altered, "decrypt error" (or "bad certificate"), not a bare EOF; a valid
certificate still gets through. The same mechanism is checked in-process on asyncio's loop
and on uvloop's (when installed), for both ways the daemon accepts TLS: ``create_server``
with ``ssl=`` and ``start_tls`` after a plain-text request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from common.tls import INTERNAL_SNI, server_context
from tests.dbenv import SEED_ROLE, DbEnv
from tests.harness import Cluster, free_port
from tests.pgserver import ThrowawayCA

REQUEST = b"GET /webapi/ping HTTP/1.0\r\n\r\n"


def s_client(addr: str, cert: Path, key: Path, cafile: Path, servername: str = INTERNAL_SNI) -> str:
    """``openssl s_client`` sends one HTTP request and reads until the server closes; all it printed."""
    result = subprocess.run(
        ["openssl", "s_client", "-connect", addr, "-servername", servername, "-CAfile", str(cafile),
         "-verify_return_error", "-cert", str(cert), "-key", str(key), "-ign_eof"],
        input=REQUEST, capture_output=True, timeout=30,
    )
    return (result.stdout + result.stderr).decode(errors="replace")


def tampered(cert_pem: bytes, was: bytes, now: bytes) -> bytes:
    """The certificate with one name changed and the CA's signature left as it was."""
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    assert len(was) == len(now) and der.count(was) >= 1
    changed = x509.load_der_x509_certificate(der.replace(was, now, 1))
    return changed.public_bytes(serialization.Encoding.PEM)


def wait_expired(cert_file: Path) -> None:
    expires = x509.load_pem_x509_certificate(cert_file.read_bytes()).not_valid_after_utc
    while datetime.now(UTC) <= expires:
        time.sleep(0.1)


# --- the mechanism, in-process, on both event loops --------------------------------------------------------


@dataclass
class Pki:
    dir: Path
    ca: Path

    def files(self, name: str) -> tuple[Path, Path]:
        return self.dir / f"{name}.crt", self.dir / f"{name}.key"


def expired_cert(ca: ThrowawayCA, name: str) -> tuple[bytes, bytes]:
    """A client certificate from ``ca`` that expired an hour ago, and its key."""
    from datetime import timedelta

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=2))
        .not_valid_after(now - timedelta(hours=1))
        .sign(ca.key, hashes.SHA256())
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), pem


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = ThrowawayCA.create("cluster")
    (root / "ca.pem").write_bytes(ca.cert_pem)
    cert, key = ca.issue("alice")
    made = {
        "server": ca.issue("localhost", ["localhost", "127.0.0.1"], server=True),
        "good": ca.issue("alice"),
        "expired": expired_cert(ca, "alice"),
        "foreign": ThrowawayCA.create("another cluster").issue("alice"),
        "tampered": (tampered(cert, b"alice", b"admin"), key),
    }
    for name, (c, k) in made.items():
        (root / f"{name}.crt").write_bytes(c)
        (root / f"{name}.key").write_bytes(k)
    return Pki(root, root / "ca.pem")


def _new_loop(name: str) -> asyncio.AbstractEventLoop:
    if name == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class _Hello(asyncio.Protocol):
    """What a client sees once its handshake succeeded."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(b"HTTP/1.0 200 OK\r\n\r\nhello from the server\n")  # type: ignore[attr-defined]
        transport.close()


class _StartTls(asyncio.Protocol):
    """The native listener's way: a PostgreSQL SSLRequest in plain text, "S", then TLS."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.started = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.started:
            self.started = True
            asyncio.get_running_loop().create_task(self._upgrade())

    async def _upgrade(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport.write(b"S")  # type: ignore[attr-defined]
        hello = _Hello()
        try:
            tls = await loop.start_tls(self.transport, hello, self.ctx, server_side=True,  # type: ignore[arg-type]
                                       ssl_handshake_timeout=30)
        except (OSError, ssl.SSLError):
            return
        hello.connection_made(tls)  # type: ignore[arg-type]


@contextlib.contextmanager
def serving(loop_name: str, mode: str, pki: Pki) -> Iterator[str]:
    """A TLS server on its own event-loop thread; yields its address."""
    loop = _new_loop(loop_name)
    server_cert, server_key = (p.read_bytes() for p in pki.files("server"))
    cas = pki.ca.read_bytes()

    async def start() -> asyncio.base_events.Server:
        if mode == "create_server":
            ctx = server_context(server_cert, server_key, client_cas=cas, client_auth="optional")
            return await loop.create_server(_Hello, "127.0.0.1", 0, ssl=ctx, ssl_handshake_timeout=30)
        ctx = server_context(server_cert, server_key, client_cas=cas, client_auth="required")
        return await loop.create_server(lambda: _StartTls(ctx), "127.0.0.1", 0)

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def openssl(addr: str, pki: Pki, name: str, mode: str) -> str:
    cert, key = pki.files(name)
    extra = ["-starttls", "postgres"] if mode == "start_tls" else []
    result = subprocess.run(
        ["openssl", "s_client", "-connect", addr, "-servername", "localhost", "-CAfile", str(pki.ca),
         "-verify_return_error", "-cert", str(cert), "-key", str(key), "-ign_eof", *extra],
        input=b"", capture_output=True, timeout=30,
    )
    return (result.stdout + result.stderr).decode(errors="replace")


@pytest.mark.parametrize("mode", ["create_server", "start_tls"])
@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_each_refusal_sends_its_alert_on_both_loops(pki: Pki, loop_name: str, mode: str) -> None:
    with serving(loop_name, mode, pki) as addr:
        outputs = {name: openssl(addr, pki, name, mode) for name in ("expired", "foreign", "tampered", "good")}
    assert "alert certificate expired" in outputs["expired"], outputs["expired"]
    assert "alert unknown ca" in outputs["foreign"], outputs["foreign"]
    assert re.search(r"alert (decrypt error|bad certificate)", outputs["tampered"]), outputs["tampered"]
    assert "hello from the server" in outputs["good"], outputs["good"]
    assert " alert " not in outputs["good"], outputs["good"]


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_a_refusal_without_an_alert_still_closes_at_once(pki: Pki, loop_name: str) -> None:
    """Plain HTTP on the TLS port: OpenSSL has no alert to send, so nothing waits for the client."""
    with serving(loop_name, "create_server", pki) as addr:
        host, port = addr.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(REQUEST)
            # The server's handshake timeout is 30 s: an answer within 10 s is the close itself.
            assert sock.recv(100) == b""


# --- against the daemon ----------------------------------------------------------------------------------------


@dataclass
class Deployment:
    env: DbEnv
    pg_port: int
    dir: Path

    def files(self, name: str) -> tuple[Path, Path, Path]:
        return self.dir / f"{name}.crt", self.dir / f"{name}.key", self.dir / "good.cas"


@pytest.fixture(scope="module")
def deployment(pg, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("alerts")
    pg.create_role("alice", "cert")
    pg_port = free_port()
    config = root / "pteleport.yaml"
    config.write_text(f"proxy_service:\n  postgres_listen_addr: 127.0.0.1:{pg_port}\n")
    env = DbEnv(root, pg, Cluster(root / "cluster", extra_args=["-c", str(config)]).start())
    try:
        pg.trust_client_ca(env.pctl("auth", "export", "--type=db-client").stdout.encode())
        assert env.pctl("create", input=SEED_ROLE).returncode == 0
        env.start_agent("aurora")
        assert env.pctl("users", "add", "alice", "--roles=db").returncode == 0
        certs = root / "certs"
        certs.mkdir()
        for name, ttl in (("expired", "1s"), ("good", "1h")):
            signed = env.pctl("auth", "sign", "--user=alice", "--format=db", "--db-service=aurora",
                              "--db-user=alice", "--db-name=postgres", f"--ttl={ttl}", f"--out={certs / name}")
            assert signed.returncode == 0, signed.stderr
        foreign_cert, foreign_key = ThrowawayCA.create("another cluster").issue("alice")
        good_cert, good_key = (certs / "good.crt").read_bytes(), (certs / "good.key").read_bytes()
        for name, cert, key in (("foreign", foreign_cert, foreign_key),
                                ("tampered", tampered(good_cert, b"alice", b"admin"), good_key)):
            (certs / f"{name}.crt").write_bytes(cert)
            (certs / f"{name}.key").write_bytes(key)
            (certs / f"{name}.key").chmod(0o600)
        wait_expired(certs / "expired.crt")
        yield Deployment(env, pg_port, certs)
    finally:
        env.stop()


@pytest.mark.slow
def test_openssl_on_the_public_port_names_the_refusal(deployment: Deployment) -> None:
    addr = deployment.env.cluster.addr
    out = {name: s_client(addr, *deployment.files(name)) for name in ("expired", "foreign", "tampered", "good")}
    assert "alert certificate expired" in out["expired"], out["expired"]
    assert "alert unknown ca" in out["foreign"], out["foreign"]
    assert re.search(r"alert (decrypt error|bad certificate)", out["tampered"]), out["tampered"]
    # The valid certificate: the proxy's host certificate verified, the API answered.
    assert "Verify return code: 0 (ok)" in out["good"] and re.search(r"HTTP/1\.[01] 200", out["good"]), out["good"]
    assert " alert " not in out["good"], out["good"]


def psql_native(d: Deployment, name: str) -> subprocess.CompletedProcess[str]:
    cert, key, cas = d.files(name)
    conninfo = (f"host=127.0.0.1 port={d.pg_port} user=alice dbname=postgres sslmode=verify-full "
                f"sslcert={cert} sslkey={key} sslrootcert={cas}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run(["psql", conninfo, "-At", "-c", "select 'through the native listener'"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=env)


@pytest.mark.slow
def test_psql_on_the_native_listener_names_the_refusal(deployment: Deployment) -> None:
    expired = psql_native(deployment, "expired")
    assert expired.returncode == 2 and "certificate expired" in expired.stderr, expired.stderr
    foreign = psql_native(deployment, "foreign")
    assert foreign.returncode == 2 and "unknown ca" in foreign.stderr, foreign.stderr
    for refused in (expired, foreign):
        assert "SSL SYSCALL" not in refused.stderr and "EOF detected" not in refused.stderr
    good = psql_native(deployment, "good")
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == "through the native listener"
