"""Relay socket buffers (common.sockets): capped on short paths, left to autotuning on long ones."""

from __future__ import annotations

import socket
import struct

from common.sockets import RELAY_BUFFER, limit_buffers, round_trip_us


def test_a_loopback_connection_gets_capped_buffers() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        try:
            assert round_trip_us(client) is not None
            assert limit_buffers(client) and limit_buffers(peer)
            # Linux books twice the value asked for.
            assert client.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) <= 2 * RELAY_BUFFER
            assert client.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) <= 2 * RELAY_BUFFER
        finally:
            client.close()
            peer.close()


class FarPeer:
    """A socket whose peer is far away: 40 ms smallest round trip."""

    def __init__(self, rtt_us: int) -> None:
        self.rtt_us = rtt_us
        self.set: list[tuple[int, int, int]] = []

    def getpeername(self) -> tuple[str, int]:
        return ("203.0.113.7", 5432)

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        info = bytearray(232)
        struct.pack_into("I", info, 68, self.rtt_us)
        struct.pack_into("I", info, 148, self.rtt_us)
        return bytes(info)

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.set.append((level, option, value))


def test_a_long_path_keeps_autotuning_and_a_short_one_is_capped() -> None:
    far = FarPeer(40_000)
    assert not limit_buffers(far) and far.set == []
    lan = FarPeer(300)
    assert limit_buffers(lan) and {opt for _lvl, opt, _v in lan.set} == {socket.SO_SNDBUF, socket.SO_RCVBUF}
    assert not limit_buffers(None)
