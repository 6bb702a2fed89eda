"""The public port's accept loop (proxy/listener.py): first-byte routing and its failure modes."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl

import pytest

from common.relay import Connection
from pteleport.proxy import listener as listener_module
from pteleport.proxy.listener import PublicListener


async def _nothing(conn: Connection) -> None:
    conn.close()


def _listener(native=None) -> PublicListener:  # type: ignore[no-untyped-def]
    return PublicListener(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH), asyncio.Protocol, _nothing,
                          _nothing, native=native)


class _Exhausted(socket.socket):
    """A listening socket whose accept fails as it does when the process is out of descriptors."""

    calls = 0

    def accept(self):  # type: ignore[no-untyped-def]
        type(self).calls += 1
        raise OSError(errno.EMFILE, "Too many open files")


def test_out_of_file_descriptors_pauses_accepting_instead_of_spinning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listener_module, "ACCEPT_PAUSE", 0.5)

    async def scenario() -> tuple[int, int]:
        public = _listener()
        sock = _Exhausted(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.setblocking(False)
        public.sockets.append(sock)
        asyncio.get_running_loop().add_reader(sock.fileno(), public._accept, sock)
        client = socket.create_connection(sock.getsockname())  # the listening socket stays readable
        try:
            await asyncio.sleep(0.3)
            during_pause = _Exhausted.calls
            await asyncio.sleep(0.5)  # the pause is over: one more try, then another pause
            after_pause = _Exhausted.calls
        finally:
            client.close()
            await public.stop()
        return during_pause, after_pause

    assert asyncio.run(scenario()) == (1, 2)


def _exchange(public: PublicListener, send: bytes) -> bytes:
    """Start ``public``, send ``send`` as a client, and return all it answers before closing."""

    async def scenario() -> bytes:
        port = await public.start("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(send)
            try:
                answer = await asyncio.wait_for(reader.read(), 5)
            except ConnectionResetError:  # closed with our bytes unread: a reset
                answer = b""
            writer.close()
            return answer
        finally:
            await public.stop()

    return asyncio.run(scenario())


def test_a_client_that_sends_nothing_is_closed_after_the_first_byte_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listener_module, "FIRST_BYTE_TIMEOUT", 0.3)
    assert _exchange(_listener(), b"") == b""


def test_plain_bytes_reach_the_native_handler_untouched() -> None:
    seen: list[bytes] = []

    async def native(conn: Connection) -> None:
        seen.append(await conn.read_exactly(8))
        conn.write(b"N")
        conn.close()

    assert _exchange(_listener(native), b"\x00\x00\x00\x08\x04\xd2\x16\x2f") == b"N"  # an SSLRequest
    assert seen == [b"\x00\x00\x00\x08\x04\xd2\x16\x2f"]


def test_without_a_native_handler_plain_clients_are_closed() -> None:
    assert _exchange(_listener(), b"GET / HTTP/1.1\r\n\r\n") == b""


def test_a_busy_port_is_the_sentence_asyncio_would_give() -> None:
    async def scenario() -> str:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            public = _listener()
            with pytest.raises(OSError) as caught:
                await public.start("127.0.0.1", busy.getsockname()[1])
            assert public.sockets == []
            return str(caught.value)

    assert "address already in use" in asyncio.run(scenario())


def test_plain_cancels_count_against_an_ipv4_address_or_an_ipv6_slash_64() -> None:
    from pteleport.proxy.server import cancel_source

    assert cancel_source("10.1.2.3:5000") == "10.1.2.3"
    assert cancel_source("[2001:db8:1:2:aaaa::1]:5000") == cancel_source("[2001:db8:1:2:bbbb::9]:6000")
    assert cancel_source("[2001:db8:1:2:aaaa::1]:5000") == "2001:db8:1:2::/64"
    assert cancel_source("[2001:db8:1:3::1]:5000") != cancel_source("[2001:db8:1:2::1]:5000")
    assert cancel_source("[::ffff:10.1.2.3]:5000") == "10.1.2.3"
