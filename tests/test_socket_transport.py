"""common.sockettransport: TLS and plain connections on the socket, on asyncio's loop and on uvloop's.

Each test runs a server and a client in one loop, both on ``SocketTransport``, and checks
what a relay relies on: every byte arrives in order under backpressure, a close delivers
what was written before it and reaches the peer as EOF, a plain connection upgrades to TLS
after a one-byte answer (PostgreSQL's SSLRequest), a refused handshake reaches the client
as its alert, and a protocol's error ends only its own connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from common.sockettransport import SocketTransport, accept_tls, open_tls, start_tls
from common.tls import server_context
from tests.pgserver import ThrowawayCA

LOOPS = ["asyncio"]
try:
    import uvloop  # noqa: F401

    LOOPS.append("uvloop")
except ImportError:
    pass


@pytest.fixture(scope="module")
def pki() -> Iterator[tuple[ssl.SSLContext, ssl.SSLContext, ThrowawayCA]]:
    ca = ThrowawayCA.create("transport test CA")
    cert, key = ca.issue("localhost", ["127.0.0.1"], server=True)
    server = server_context(cert, key, client_cas=ca.cert_pem, client_auth="required")
    ccert, ckey = ca.issue("alice")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "ca.pem").write_bytes(ca.cert_pem)
        (Path(tmp) / "c.pem").write_bytes(ccert + ckey)
        client = ssl.create_default_context(cafile=str(Path(tmp) / "ca.pem"))
        client.load_cert_chain(str(Path(tmp) / "c.pem"))
    yield server, client, ca


def run(loop_kind: str, main: Callable[[], Awaitable[None]]) -> None:
    if loop_kind == "uvloop":
        import uvloop

        uvloop.run(asyncio.wait_for(main(), 30))
    else:
        asyncio.run(asyncio.wait_for(main(), 30))


class Collect(asyncio.Protocol):
    """Keeps what arrives; ``slow`` pauses reading after each chunk for a moment (a slow reader)."""

    def __init__(self, slow: bool = False) -> None:
        self.data = bytearray()
        self.done: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.eof = False
        self.paused_writing = 0
        self.slow = slow
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.data += data
        if self.slow and self.transport is not None:
            self.transport.pause_reading()
            asyncio.get_running_loop().call_later(0.002, self.transport.resume_reading)

    def eof_received(self) -> bool:
        self.eof = True
        return False

    def pause_writing(self) -> None:
        self.paused_writing += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(exc)


async def tls_pair(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_proto: Collect, client_proto: Collect
) -> tuple[SocketTransport, SocketTransport]:
    loop = asyncio.get_running_loop()
    listening = socket.create_server(("127.0.0.1", 0))
    listening.setblocking(False)
    port = listening.getsockname()[1]

    async def serve() -> SocketTransport:
        sock, _ = await loop.sock_accept(listening)
        return await accept_tls(sock, server_ctx, lambda: server_proto, 10)

    server_task = asyncio.ensure_future(serve())
    client = await open_tls(client_proto, "127.0.0.1", port, client_ctx, "localhost", 10)
    server = await server_task
    listening.close()
    return server, client


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_bytes_arrive_whole_and_in_order_under_backpressure_and_close_delivers_them(loop_kind, pki) -> None:
    server_ctx, client_ctx, _ca = pki
    payload = os.urandom(8 * 1024 * 1024)

    async def main() -> None:
        receiver, sender = Collect(slow=True), Collect()
        server, client = await tls_pair(server_ctx, client_ctx, receiver, sender)
        for i in range(0, len(payload), 100_000):  # many writes, far past the high-water mark
            client.write(payload[i : i + 100_000])
        assert sender.paused_writing >= 1 and client.get_write_buffer_size() > 0
        client.close()  # what is buffered still goes out, then close_notify
        assert await sender.done is None
        assert await receiver.done is None
        assert receiver.eof and hashlib.sha256(receiver.data).digest() == hashlib.sha256(payload).digest()
        assert server.is_closing() and client.is_closing()

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_small_messages_echo_and_the_peer_sees_the_certificate_and_address(loop_kind, pki) -> None:
    server_ctx, client_ctx, _ca = pki

    class Echo(Collect):
        def data_received(self, data: bytes) -> None:
            assert self.transport is not None
            self.transport.write(data.upper())

    async def main() -> None:
        echo, client_proto = Echo(), Collect()
        server, client = await tls_pair(server_ctx, client_ctx, echo, client_proto)
        der = server.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert b"alice" in der
        assert server.get_extra_info("peername")[0] == "127.0.0.1"
        assert server.get_extra_info("sslcontext") is not None and not server.can_write_eof()
        for i in range(200):
            client.write(b"q%d;" % i)
            while not client_proto.data.endswith(b"Q%d;" % i):
                await asyncio.sleep(0)
        assert bytes(client_proto.data) == b"".join(b"Q%d;" % i for i in range(200))
        server.close()
        assert await client_proto.done is None and client_proto.eof
        assert await echo.done is None

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_plain_connection_upgrades_to_tls_after_an_answer(loop_kind, pki) -> None:
    server_ctx, client_ctx, _ca = pki

    async def main() -> None:
        loop = asyncio.get_running_loop()
        listening = socket.create_server(("127.0.0.1", 0))
        listening.setblocking(False)
        raw_client = socket.create_connection(listening.getsockname())
        raw_client.setblocking(False)
        sock, _ = await loop.sock_accept(listening)
        server_proto = Collect()
        plain = SocketTransport(sock, server_proto)
        assert plain.can_write_eof() and plain.get_extra_info("ssl_object") is None
        await loop.sock_sendall(raw_client, b"SSLREQ")
        while bytes(server_proto.data) != b"SSLREQ":
            await asyncio.sleep(0.01)

        async def answer_and_upgrade() -> asyncio.Transport:
            plain.write(b"S")  # as the proxy does: the answer, then TLS at once, before any read
            return await start_tls(plain, server_ctx, server_side=True, timeout=10)

        upgrading = asyncio.ensure_future(answer_and_upgrade())
        assert await loop.sock_recv(raw_client, 1) == b"S"
        client_tls = await _client_handshake(raw_client, client_ctx)
        tls = await upgrading
        assert tls.get_protocol() is server_proto and plain.is_closing()
        reader, writer = stream_pair(client_tls)
        tls.write(b"hello over tls")
        assert await reader.readexactly(14) == b"hello over tls"
        writer.write(b"bye")
        writer.close()
        assert await server_proto.done is None
        assert bytes(server_proto.data) == b"SSLREQbye"
        listening.close()

    run(loop_kind, main)


def stream_pair(sock: socket.socket) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio's stream reader and writer on a SocketTransport, as ``asyncio.open_connection`` gives."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    protocol = asyncio.StreamReaderProtocol(reader)
    return reader, asyncio.StreamWriter(SocketTransport(sock, protocol), protocol, reader, loop)


async def _client_handshake(raw: socket.socket, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    from common.sockettransport import handshake

    return await handshake(raw, ctx, server_side=False, timeout=10, server_hostname="localhost")


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_write_eof_half_closes_a_plain_connection(loop_kind) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        listening = socket.create_server(("127.0.0.1", 0))
        listening.setblocking(False)
        raw_client = socket.create_connection(listening.getsockname())
        raw_client.setblocking(False)
        sock, _ = await loop.sock_accept(listening)
        proto = Collect()
        transport = SocketTransport(sock, proto)
        transport.write(b"last words")
        transport.write_eof()
        got = b""
        while True:
            chunk = await loop.sock_recv(raw_client, 100)
            if not chunk:
                break
            got += chunk
        assert got == b"last words"
        await loop.sock_sendall(raw_client, b"still heard")  # half-closed: our side reads on
        raw_client.close()
        assert await proto.done is None and bytes(proto.data) == b"still heard" and proto.eof
        listening.close()

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_refused_client_certificate_reaches_the_client_as_its_alert(loop_kind, pki) -> None:
    server_ctx, _client_ctx, ca = pki
    stranger = ThrowawayCA.create("someone else's CA")
    cert, key = stranger.issue("mallory")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "ca.pem").write_bytes(ca.cert_pem)
        (Path(tmp) / "c.pem").write_bytes(cert + key)
        foreign = ssl.create_default_context(cafile=str(Path(tmp) / "ca.pem"))
        foreign.load_cert_chain(str(Path(tmp) / "c.pem"))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        listening = socket.create_server(("127.0.0.1", 0))
        listening.setblocking(False)

        async def serve() -> None:
            sock, _ = await loop.sock_accept(listening)
            with pytest.raises(ssl.SSLError, match="certificate verify failed"):
                await accept_tls(sock, server_ctx, Collect, 10)

        refusing = asyncio.ensure_future(serve())
        client_proto = Collect()
        # TLS 1.3: the client's handshake ends before the server checks its certificate;
        # the client reads the server's alert next.
        await open_tls(client_proto, "127.0.0.1", listening.getsockname()[1], foreign, "localhost", 10)
        await refusing
        error = await client_proto.done
        assert isinstance(error, ssl.SSLError) and "unknown ca" in str(error)
        listening.close()

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_bytes_held_inside_openssl_past_one_callbacks_limit_are_still_delivered(loop_kind, pki) -> None:
    """27 records of 10,000 bytes arrive while reading is paused; on resume one callback may
    take only 256 KiB, and the rest sits decrypted inside OpenSSL with nothing more on the
    socket to wake the loop. It must arrive anyway, with the sender quiet."""
    server_ctx, client_ctx, _ca = pki

    async def main() -> None:
        receiver, sender = Collect(), Collect()
        server, client = await tls_pair(server_ctx, client_ctx, receiver, sender)
        server.pause_reading()
        for _ in range(27):
            client.write(os.urandom(10_000))  # one TLS record each
            await asyncio.sleep(0)
        await asyncio.sleep(0.2)
        server.resume_reading()
        for _ in range(100):
            if len(receiver.data) == 270_000:
                break
            await asyncio.sleep(0.01)
        assert len(receiver.data) == 270_000
        client.close()
        await receiver.done

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_protocol_that_fails_ends_its_own_connection_only(loop_kind, pki) -> None:
    server_ctx, client_ctx, _ca = pki

    class Broken(Collect):
        def data_received(self, data: bytes) -> None:
            raise ValueError("a bug in the protocol")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        broken, broken_peer = Broken(), Collect()
        fine, fine_peer = Collect(), Collect()
        _s1, c1 = await tls_pair(server_ctx, client_ctx, broken, broken_peer)
        _s2, c2 = await tls_pair(server_ctx, client_ctx, fine, fine_peer)
        c1.write(b"boom")
        c2.write(b"hello")
        assert isinstance(await broken.done, ValueError)
        await broken_peer.done  # the peer sees the connection end
        while bytes(fine.data) != b"hello":
            await asyncio.sleep(0.01)
        assert not fine.done.done() and not c2.is_closing()
        assert [type(r.get("exception")) for r in reported] == [ValueError]
        c2.close()
        assert await fine.done is None

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_close_whose_peer_never_reads_ends_with_a_timeout_not_a_clean_close(loop_kind, pki, monkeypatch) -> None:
    import common.sockettransport as st

    monkeypatch.setattr(st, "CLOSE_TIMEOUT", 0.5)
    server_ctx, client_ctx, _ca = pki

    async def main() -> None:
        receiver, sender = Collect(), Collect()
        server, client = await tls_pair(server_ctx, client_ctx, receiver, sender)
        server.pause_reading()  # never reads again
        client.write(os.urandom(16 * 1024 * 1024))
        client.close()
        assert isinstance(await sender.done, TimeoutError)
        assert client.is_closing() and client.get_write_buffer_size() == 0
        server.abort()
        await receiver.done

    run(loop_kind, main)
