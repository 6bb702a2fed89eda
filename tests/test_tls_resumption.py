"""Client contexts that trust the cluster resume TLS sessions (common.tlsctx.ResumingContext).

Measured with OpenSSL 3.0 on this machine: a full mutual-TLS handshake costs both ends about
twice the CPU of a resumed one, and every database session opens two TLS connections from
long-lived dialers (the agent's data link, the ptsh tunnel's link to the proxy).
"""

from __future__ import annotations

import asyncio
import datetime
import gc

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from common.relay import Connection
from common.tls import INTERNAL_SNI, client_context, generate_private_key, private_key_pem, server_context


def _cert(cn: str, issuer=None, issuer_key=None, ca: bool = False):  # type: ignore[no-untyped-def]
    key = generate_private_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(INTERNAL_SNI)]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256()), key


def _pem(cert) -> bytes:  # type: ignore[no-untyped-def]
    return cert.public_bytes(Encoding.PEM)


async def _connections(count: int, fresh_client_each_time: bool = False) -> list[tuple[bool, bytes]]:
    """Open ``count`` mutual-TLS connections one after another: (resumed?, client cert the server saw)."""
    ca, ca_key = _cert("test ca", ca=True)
    server_cert, server_key = _cert("proxy", ca, ca_key)
    user_cert, user_key = _cert("alice", ca, ca_key)
    server_ctx = server_context(_pem(server_cert), private_key_pem(server_key), client_cas=_pem(ca))
    seen: list[bytes] = []

    class Greeter(Connection):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:  # after the handshake
            super().connection_made(transport)
            seen.append(self.peer_cert_der())
            self.write(b"hello")

    server = await asyncio.get_running_loop().create_server(Greeter, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]

    def make_client():  # type: ignore[no-untyped-def]
        return client_context(cas=_pem(ca), cert=_pem(user_cert), key=private_key_pem(user_key))

    ctx = make_client()
    results = []
    try:
        for _ in range(count):
            if fresh_client_each_time:
                ctx = make_client()
            transport, conn = await asyncio.get_running_loop().create_connection(
                Connection, "127.0.0.1", port, ssl=ctx, server_hostname=INTERNAL_SNI
            )
            assert await conn.read_exactly(5) == b"hello"  # the session ticket has arrived by now
            results.append(transport.get_extra_info("ssl_object").session_reused)
            transport.close()
            await conn.closed
            del transport, conn  # gone before the next dial, as one psql after another
            gc.collect()
    finally:
        server.close()
    user_der = user_cert.public_bytes(Encoding.DER)
    return [(reused, der == user_der) for reused, der in zip(results, seen, strict=True)]  # type: ignore[misc]


def _run(loop: str, job):  # type: ignore[no-untyped-def]
    factory = None
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(job)


LOOPS = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])


@LOOPS
def test_the_second_connection_of_a_context_resumes_and_still_carries_the_client_certificate(loop: str) -> None:
    results = _run(loop, _connections(4))
    assert [reused for reused, _ in results] == [False, True, True, True]
    assert all(cert_seen for _, cert_seen in results)  # the proxy and agent read the identity from it


@LOOPS
def test_a_new_context_starts_with_a_full_handshake(loop: str) -> None:
    """A renewed certificate means a new context: its first connection proves the new certificate."""
    results = _run(loop, _connections(3, fresh_client_each_time=True))
    assert [reused for reused, _ in results] == [False, False, False]


def test_the_agent_mesh_gives_each_proxy_a_context_of_its_own() -> None:
    """Tickets are per proxy: one shared context would offer proxy A's ticket to proxy B."""
    from pteleport.tunnel.mesh import TunnelMesh

    async def scenario() -> list[object]:
        async def on_session(conn: Connection) -> None:
            conn.close()

        made: list[object] = []

        def context_for():  # type: ignore[no-untyped-def]
            made.append(client_context())
            return made[-1]

        mesh = TunnelMesh("127.0.0.1", 9, client_context(), "agent", lambda: [], on_session, context_for=context_for)
        mesh._start("proxy-a", ("127.0.0.1", 9))
        mesh._start("proxy-b", ("127.0.0.1", 9))
        contexts = [member.agent.ssl_context for member in mesh.members.values()]
        await mesh.stop()
        assert contexts == made
        return contexts

    first, second = asyncio.run(scenario())
    assert first is not second
