"""Mux links: many sessions as streams on one tunnel link, each with its own flow control.

The link tests run two ``MuxLink`` ends over a loopback TCP connection in one process; the
tunnel tests run a ``TunnelServer`` offering mux and a ``TunnelAgent`` over TLS
(``tunnel_pair`` from tests/test_tunnel_pool.py). Sessions through the real daemons go
over mux links in every end-to-end test.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import struct
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from common.relay import Connection, splice
from pteleport.tunnel.mux import DATA, HEADER, WINDOW_SIZE, MuxLink, MuxStream
from pteleport.tunnel.protocol import encode
from pteleport.tunnel.server import TunnelServer
from tests.test_tunnel_pool import _until, _use, tunnel_pair


class Echo(asyncio.Protocol):
    """The agent side of a stream in these tests: sends back what it gets."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        self.transport.close()
        return False


@asynccontextmanager
async def link_pair(
    on_open: object = None,
) -> AsyncIterator[tuple[MuxLink, MuxLink, list[MuxStream]]]:
    """(opener, acceptor, streams the acceptor got): two ends over loopback TCP."""
    loop = asyncio.get_running_loop()
    accepted: list[MuxStream] = []

    def opened(stream: MuxStream) -> None:
        accepted.append(stream)
        protocol = on_open() if callable(on_open) else Echo()  # type: ignore[operator]
        stream.set_protocol(protocol)
        protocol.connection_made(stream)

    acceptor = MuxLink(opened)
    server = await loop.create_server(lambda: acceptor, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _transport, opener = await loop.create_connection(MuxLink, "127.0.0.1", port)
    await _until(lambda: acceptor.transport is not None)
    try:
        yield opener, acceptor, accepted
    finally:
        opener.close()
        acceptor.close()
        server.close()


def _connect(link: MuxLink) -> Connection:
    return Connection.attach(link.open())


async def _read(conn: Connection, size: int) -> bytes:
    return await asyncio.wait_for(conn.read_exactly(size), 10)


def test_many_streams_carry_their_own_bytes_intact_in_both_directions() -> None:
    async def main() -> None:
        async with link_pair() as (opener, _acceptor, accepted):
            payloads = [os.urandom(300_000 + i * 7_777) for i in range(12)]
            conns = [_connect(opener) for _ in payloads]
            for conn, payload in zip(conns, payloads, strict=True):
                conn.write(payload)  # more than a window each: the senders wait for credit
            echoes = await asyncio.gather(*(_read(c, len(p)) for c, p in zip(conns, payloads, strict=True)))
            for echo, payload in zip(echoes, payloads, strict=True):
                assert hashlib.sha256(echo).digest() == hashlib.sha256(payload).digest()
            assert len(accepted) == 12 and len({s.stream_id for s in accepted}) == 12

    asyncio.run(main())


class Stalled(asyncio.Protocol):
    """A reader whose own peer is slow: it pauses reading and keeps what it got."""

    instances: list[Stalled] = []

    def __init__(self) -> None:
        self.got = bytearray()
        self.eof = False
        self.lost: list[Exception | None] = []
        Stalled.instances.append(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: MuxStream = transport  # type: ignore[assignment]
        self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.got += data

    def eof_received(self) -> bool:
        self.eof = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


class Writer(Connection):
    """The opener's side, counting pause_writing calls."""

    def __init__(self) -> None:
        super().__init__()
        self.pauses = 0

    def pause_writing(self) -> None:
        self.pauses += 1
        super().pause_writing()


def test_a_stalled_reader_holds_one_window_in_flight_and_never_blocks_another_stream() -> None:
    async def main() -> None:
        Stalled.instances.clear()
        async with link_pair(on_open=Stalled) as (opener, acceptor, accepted):
            slow_stream = opener.open()
            slow = Writer()
            slow_stream.set_protocol(slow)
            slow.connection_made(slow_stream)
            big = os.urandom(3 * WINDOW_SIZE)
            slow.write(big)
            await _until(lambda: len(accepted) == 1 and accepted[0]._unacked == WINDOW_SIZE)
            assert slow.pauses == 1  # the writer was told to stop reading its own source
            assert slow_stream.get_write_buffer_size() == len(big) - WINDOW_SIZE  # the rest waits here
            assert slow_stream._send_window == 0
            # Another session on the same link still gets through at once.
            accepted_before = len(accepted)
            quick = _connect(opener)
            await _until(lambda: len(accepted) == accepted_before + 1)
            quick_reader = Stalled.instances[-1]
            quick_reader.transport.resume_reading()
            quick.write(b"select 1")
            await _until(lambda: bytes(quick_reader.got) == b"select 1", timeout=2)
            # The stalled reader resumes: everything arrives, in order, then the close.
            slow_stream.close()
            assert not acceptor.closed.done()
            Stalled.instances[0].transport.resume_reading()
            await _until(lambda: Stalled.instances[0].lost == [None])
            assert bytes(Stalled.instances[0].got) == big
            assert Stalled.instances[0].eof
            await _until(lambda: slow.closed.done())

    asyncio.run(main())


def test_a_close_arrives_after_everything_written_before_it() -> None:
    async def main() -> None:
        Stalled.instances.clear()
        async with link_pair(on_open=Stalled) as (opener, _acceptor, _accepted):
            conn = _connect(opener)
            data = os.urandom(700_000)
            conn.write(data)
            conn.close()  # before the window allowed it all to leave
            await _until(lambda: bool(Stalled.instances))
            reader = Stalled.instances[0]
            reader.transport.resume_reading()
            await _until(lambda: reader.lost == [None])
            assert bytes(reader.got) == data and reader.eof
            await _until(lambda: conn.closed.done())
            assert not opener.streams

    asyncio.run(main())


def test_when_the_link_drops_every_stream_on_it_ends_with_a_reset_on_both_sides() -> None:
    async def main() -> None:
        Stalled.instances.clear()
        async with link_pair(on_open=Stalled) as (opener, acceptor, _accepted):
            conns = [_connect(opener) for _ in range(3)]
            await _until(lambda: len(Stalled.instances) == 3)
            assert opener.transport is not None
            opener.transport.abort()
            await _until(lambda: all(s.lost for s in Stalled.instances))
            assert all(isinstance(s.lost[0], ConnectionResetError) for s in Stalled.instances)
            await asyncio.gather(*(asyncio.wait_for(c.closed, 5) for c in conns))
            assert not opener.streams and not acceptor.streams
            try:
                opener.open()
            except ConnectionResetError:
                pass
            else:
                raise AssertionError("opened a stream on a closed link")

    asyncio.run(main())


def test_a_peer_that_sends_past_its_window_loses_the_link() -> None:
    async def main() -> None:
        Stalled.instances.clear()
        async with link_pair(on_open=Stalled) as (opener, acceptor, _accepted):
            stream = opener.open()
            await _until(lambda: bool(Stalled.instances))
            assert opener.transport is not None
            chunk = b"x" * (64 * 1024)
            for _ in range(WINDOW_SIZE // len(chunk) + 1):  # one frame more than the window, unasked
                opener.transport.write(HEADER.pack(DATA, stream.stream_id, len(chunk)) + chunk)
            await asyncio.wait_for(acceptor.closed, 5)
            await asyncio.wait_for(opener.closed, 5)
            assert Stalled.instances[0].lost and isinstance(Stalled.instances[0].lost[0], ConnectionResetError)

    asyncio.run(main())


def test_a_retired_link_takes_no_new_streams_and_closes_after_its_last_one() -> None:
    async def main() -> None:
        async with link_pair() as (opener, acceptor, _accepted):
            conn = _connect(opener)
            conn.write(b"ping")
            assert await _read(conn, 4) == b"ping"
            acceptor.retire()
            assert not acceptor.usable
            late = _connect(opener)  # the acceptor refuses it: it ends at once
            await asyncio.wait_for(late.closed, 5)
            conn.write(b"still")
            assert await _read(conn, 5) == b"still"  # the open session goes on
            assert not acceptor.closed.done()
            conn.close()
            await asyncio.wait_for(acceptor.closed, 5)

    asyncio.run(main())


def test_a_frame_split_anywhere_across_reads_is_put_back_together() -> None:
    async def main() -> None:
        got: list[bytes] = []

        class Keep(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                got.append(data)

        def opened(stream: MuxStream) -> None:
            stream.set_protocol(Keep())

        wire = b"".join(
            [HEADER.pack(1, 5, 0)] + [HEADER.pack(DATA, 5, len(p)) + p for p in (b"abc", b"", b"defgh" * 100)]
        )
        for step in range(1, 12):  # every step size: reads end inside headers, payloads, and at frame ends
            got.clear()
            link = MuxLink(opened)
            for cut in range(0, len(wire), step):
                link.data_received(wire[cut : cut + step])
            assert b"".join(got) == b"abc" + b"defgh" * 100, step
        assert struct.calcsize("!BII") == HEADER.size == 9

    asyncio.run(main())


async def _mux_up(server: TunnelServer) -> None:
    await _until(lambda: "host-1" in server.agents and server.agents["host-1"].mux is not None)


def test_sessions_go_over_one_mux_link_with_no_dial_back_and_no_spares() -> None:
    async def main() -> None:
        async with tunnel_pair(pool_size=2, mux=True) as (server, agent, sessions):
            await _mux_up(server)
            link = server.agents["host-1"]
            dialled: list[str] = []
            agent._open_data = dialled.append  # type: ignore[method-assign,assignment]
            links = [await _use(server, f"s{i}") for i in range(10)]
            assert dialled == []  # no dial line reached the agent
            assert not link.spares  # the agent took mux instead of pool
            assert len(link.mux.streams) == 10  # type: ignore[union-attr]
            assert [s["marker"] for s in sessions] == [f"s{i}" for i in range(10)]
            links[3].write(b"after the greeting")
            assert await _read(links[3], 18) == b"after the greeting"
            for conn in links:
                conn.close()
            await _until(lambda: not link.mux.streams)  # type: ignore[union-attr]

    asyncio.run(main())


def test_sessions_outlive_a_dropped_control_link_and_new_ones_use_the_new_mux_link() -> None:
    async def main() -> None:
        async with tunnel_pair(pool_size=0, mux=True) as (server, _agent, sessions):
            await _mux_up(server)
            first_mux = server.agents["host-1"].mux
            before = await _use(server, "before")
            server.agents["host-1"].control.close()  # the control link drops; the agent redials
            await _until(
                lambda: (
                    "host-1" in server.agents
                    and server.agents["host-1"].mux not in (None, first_mux)
                    and not server.agents["host-1"].control.closed.done()
                )
            )
            before.write(b"still here")
            assert await _read(before, 10) == b"still here"  # the old mux link still carries it
            after = await _use(server, "after")
            assert [s["marker"] for s in sessions] == ["before", "after"]
            assert first_mux is not None and not first_mux.usable
            before.close()
            await asyncio.wait_for(first_mux.closed, 5)  # retired, and now empty: closed
            after.write(b"x")
            assert await _read(after, 1) == b"x"
            after.close()

    asyncio.run(main())


def test_a_spliced_stream_relays_a_large_transfer_with_backpressure() -> None:
    """What the proxy does: splice a client connection with a stream; the agent echoes."""

    async def main() -> None:
        async with link_pair() as (opener, _acceptor, _accepted):
            loop = asyncio.get_running_loop()
            relays: list[asyncio.Task[object]] = []

            def client_side() -> Connection:
                conn = Connection()  # spliced once connected (on the next turn of the loop)
                loop.call_soon(lambda: relays.append(loop.create_task(splice(conn, _connect(opener)))))
                return conn

            server = await loop.create_server(client_side, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            data = os.urandom(5 * 1024 * 1024)

            async def send() -> None:
                writer.write(data)
                await writer.drain()

            sending = loop.create_task(send())
            echoed = await asyncio.wait_for(reader.readexactly(len(data)), 30)
            await sending
            assert echoed == data
            writer.write(encode({"type": "bye"}))
            writer.close()
            await asyncio.wait_for(asyncio.gather(*relays), 5)
            server.close()

    asyncio.run(main())


def test_a_finished_stream_is_freed_at_once_not_by_the_garbage_collector() -> None:
    """Sessions end by the thousand: what a closed stream held must go when it closes.

    A stream and its protocol refer to each other; unless the stream lets go of its
    protocol once the session is over, the pair (and the relay and client connection behind
    it) waits for a full cyclic collection, and the proxy's memory climbs round after round.
    """

    async def main() -> None:
        async with link_pair() as (opener, _acceptor, accepted):
            conn = _connect(opener)
            conn.write(b"ping")
            assert await _read(conn, 4) == b"ping"
            mine, theirs = weakref.ref(conn.transport), weakref.ref(accepted.pop())  # type: ignore[arg-type]
            gc.disable()
            try:
                conn.close()
                await asyncio.wait_for(conn.closed, 5)
                await _until(lambda: not opener.streams and not _acceptor.streams)
                await asyncio.sleep(0.05)
                del conn
                assert mine() is None and theirs() is None
            finally:
                gc.enable()

    asyncio.run(main())


def test_a_mux_link_that_went_silent_is_not_used_and_dial_back_takes_over() -> None:
    """A NAT that forgets the mux link's flow while the control link lives: sessions must not go into the hole."""

    async def main() -> None:
        async with tunnel_pair(pool_size=0, mux=True) as (server, _agent, sessions):
            await _mux_up(server)
            mux = server.agents["host-1"].mux
            assert mux is not None
            mux.last_heard -= 60  # no frame, not even a PING, for a minute
            link = await _use(server, "dialled")
            assert not mux.streams  # it went over a dial-back data link
            assert sessions[-1]["marker"] == "dialled"
            link.close()

    asyncio.run(main())


def test_the_agent_may_not_open_streams_on_the_proxy() -> None:
    async def main() -> None:
        async with link_pair() as (opener, acceptor, _accepted):
            assert acceptor.transport is not None
            acceptor.transport.write(HEADER.pack(1, 7, 0))  # OPEN, from the side that only accepts
            await asyncio.wait_for(opener.closed, 5)  # the proxy's side drops the link

    asyncio.run(main())


def test_a_session_whose_protocol_fails_ends_alone() -> None:
    class Broken(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            raise RuntimeError("a bug in one session")

    async def main() -> None:
        kinds = iter([Broken, Echo])
        async with link_pair(on_open=lambda: next(kinds)()) as (opener, acceptor, _accepted):
            broken, fine = _connect(opener), _connect(opener)
            broken.write(b"boom")
            await asyncio.wait_for(broken.closed, 5)  # that session ends
            fine.write(b"still fine")
            assert await _read(fine, 10) == b"still fine"  # the link and the other session go on
            assert not acceptor.closed.done()

    asyncio.run(main())


def test_closing_with_a_backlog_never_deadlocks_and_gives_up_after_the_close_timeout(monkeypatch) -> None:
    """Both sides have more to send than the window; one closes. It must keep granting window
    (the other side's backlog drains), and a backlog the other side never takes is dropped
    after CLOSE_TIMEOUT instead of pinning the stream (and its database session) forever."""
    import pteleport.tunnel.mux as mux_module

    monkeypatch.setattr(mux_module, "CLOSE_TIMEOUT", 1.5)

    class Flooder(Stalled):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # never reads what it is sent
            self.transport.write(os.urandom(3 * WINDOW_SIZE))

    async def main() -> None:
        Stalled.instances.clear()
        async with link_pair(on_open=Flooder) as (opener, acceptor, _accepted):
            stream = opener.open()
            mine = Stalled()
            stream.set_protocol(mine)
            mine.connection_made(stream)  # this side does not read either
            stream.write(os.urandom(3 * WINDOW_SIZE))
            await _until(lambda: len(Stalled.instances) == 2)
            flooder = Stalled.instances[1]
            await _until(lambda: flooder.transport._send_window == 0)  # both sides stuck on window
            stream.close()
            # We kept granting: the other side's backlog drains while ours still waits.
            await _until(lambda: flooder.transport.get_write_buffer_size() == 0, timeout=1)
            assert opener.streams
            await _until(lambda: not opener.streams, timeout=5)  # our backlog was dropped after the timeout
            flooder.transport.resume_reading()  # what we sent before giving up, then our CLOSE
            await _until(lambda: flooder.lost == [None], timeout=5)
            assert flooder.eof and not acceptor.streams

    asyncio.run(main())
