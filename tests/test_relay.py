"""``common.relay``: what a finished relay leaves behind.

The relays run over socket pairs in one process; sessions through the real daemons are
relayed in every end-to-end test.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref

from common.relay import Connection, Splice


class Owner:
    """What the database agent's live session is to its relay: it holds the splice, and the tap is its method."""

    def __init__(self) -> None:
        self.splice: Splice | None = None
        self.seen = bytearray()

    def tap(self, data: bytes) -> None:
        self.seen += data


async def _connection(sock: socket.socket) -> Connection:
    _transport, conn = await asyncio.get_running_loop().create_connection(Connection, sock=sock)
    return conn


def test_a_finished_relay_frees_its_session_without_the_garbage_collector() -> None:
    """500 sessions a round must not wait for a full collection: a relay lets go of its tap when it ends."""

    async def main() -> None:
        client_a, relay_a = socket.socketpair()
        client_b, relay_b = socket.socketpair()
        a, b = await _connection(relay_a), await _connection(relay_b)
        owner = Owner()
        owner.splice = Splice(a, b, owner.tap)
        run = asyncio.get_running_loop().create_task(owner.splice.run())
        client_a.sendall(b"select 1")
        client_b.setblocking(False)
        got = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(client_b, 100), 5)
        assert got == b"select 1" and owner.seen == b"select 1"  # tapped and forwarded
        gone = weakref.ref(owner)
        gc.disable()
        try:
            client_a.close()  # the client leaves; the relay ends
            await asyncio.wait_for(run, 5)
            await asyncio.sleep(0.05)  # the transports' connection_lost callbacks
            del owner, a, b, run
            assert gone() is None
        finally:
            gc.enable()
            client_b.close()

    asyncio.run(main())
