"""``python -m bench.tlsfloor KIND``: resident memory of one idle server-side connection.

KIND is ``plain`` (TCP), ``asyncio`` (TLS, stock event loop's transport), ``uvloop`` (TLS,
uvloop's transport) or ``socket`` (TLS on ``common.sockettransport``, what pteleport uses;
on uvloop when it is installed). The
server is this process, holding a do-nothing protocol per connection; the clients run in
a child process so their memory is not counted. Prints one number: KiB per connection.
This is the floor under any per-session memory of a Python TLS relay on this machine.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

COUNT = 400
CLIENT = """
import asyncio, ssl, sys
async def main(port, count, tls):
    ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
    writers = []
    for _ in range(count):
        _r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx if tls else None)
        w.write(b"x" * 100)
        writers.append(w)
    await asyncio.sleep(float(sys.argv[4]))
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"))
"""


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class _Idle(asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        pass


async def _measure(kind: str) -> float:
    from tests.pgserver import ThrowawayCA

    tls = kind != "plain"
    ctx = None
    if tls:
        ca = ThrowawayCA.create("tls floor CA")
        cert, key = ca.issue("localhost", ["127.0.0.1"], server=True)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "c.pem").write_bytes(cert + key)
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(Path(tmp) / "c.pem"))
    if kind == "socket":
        assert ctx is not None
        server = _SocketServer(ctx)
    else:
        server = await asyncio.get_running_loop().create_server(_Idle, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]

    async def clients(count: int, hold: float) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", CLIENT, str(port), str(count), "1" if tls else "0", str(hold)])
        return proc

    warm = await clients(20, 1.0)  # first connections load code and grow the heap
    await asyncio.sleep(1.5)
    warm.wait()
    await asyncio.sleep(0.3)
    before = _rss_kib()
    main = await clients(COUNT, 3.0)
    await asyncio.sleep(2.5)
    after = _rss_kib()
    main.wait()
    server.close()
    return (after - before) / COUNT


class _SocketServer:
    """Accepts with ``loop.sock_accept`` and carries each connection on a ``SocketTransport``."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        listening = socket.create_server(("127.0.0.1", 0), backlog=1024)
        listening.setblocking(False)
        self.sockets = [listening]
        self.transports: list[asyncio.Transport] = []
        self.task = asyncio.ensure_future(self._accept())

    async def _accept(self) -> None:
        from common.sockettransport import accept_tls

        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(self.sockets[0])
            task = loop.create_task(accept_tls(sock, self.ctx, _Idle, 10))
            task.add_done_callback(lambda done: self.transports.append(done.result()))

    def close(self) -> None:
        self.task.cancel()
        for transport in self.transports:
            transport.abort()
        self.sockets[0].close()


def main() -> None:
    kind = sys.argv[1]
    if kind == "uvloop" or (kind == "socket" and importlib.util.find_spec("uvloop") is not None):
        import uvloop

        print(f"{uvloop.run(_measure(kind)):.1f}")
    else:
        print(f"{asyncio.run(_measure(kind)):.1f}")


if __name__ == "__main__":
    main()
