"""Socket settings for relayed connections: keep in flight per hop what the path needs, no more.

A relay that reads as fast as it can lets the kernel grow each socket's buffers to
megabytes (Linux autotuning: up to ``tcp_wmem``/``tcp_rmem`` max, 4-6 MiB). Through a chain of
four relayed hops that is tens of MiB in flight that a direct connection does not have:
when a client cancels a large COPY, the server has long finished sending, and the cancel
comes too late (the transaction ends INTRANS instead of INERROR).

``limit_buffers`` caps a connected socket's send and receive buffers at ``RELAY_BUFFER``
when its path is short (a loopback peer, or a smallest round trip the kernel measured under
``SHORT_RTT``: LAN), where that is still many times the bandwidth-delay product, so
throughput does not drop. On longer paths
the kernel keeps autotuning: a small window there would cap throughput (a 256 KiB window
over 50 ms is 5 MB/s), and a direct connection over such a path buffers as much anyway.
"""

from __future__ import annotations

import contextlib
import socket
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

RELAY_BUFFER = 128 * 1024  # bytes per direction per socket (the kernel books twice this)
SHORT_RTT = 2000  # microseconds
# Offsets in Linux's struct tcp_info (u32, microseconds): the smoothed and the smallest round trip.
_TCPI_RTT = 68
_TCPI_MIN_RTT = 148


def round_trip_us(sock: Any) -> int | None:
    """The smallest round trip the kernel saw on a connected TCP socket (Linux; else the smoothed one), or None."""
    if not hasattr(socket, "TCP_INFO"):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
    except (OSError, AttributeError, TypeError):
        return None
    if len(info) >= _TCPI_MIN_RTT + 4:
        return int(struct.unpack_from("I", info, _TCPI_MIN_RTT)[0])
    if len(info) >= _TCPI_RTT + 4:
        return int(struct.unpack_from("I", info, _TCPI_RTT)[0])
    return None


def _loopback_peer(sock: Any) -> bool:
    try:
        peer = sock.getpeername()
    except (OSError, AttributeError):
        return False
    host = peer[0] if isinstance(peer, tuple) else ""
    return host.startswith("127.") or host in ("::1", "::ffff:127.0.0.1")


def limit_buffers(sock: Any, size: int = RELAY_BUFFER) -> bool:
    """Cap ``sock``'s buffers when its path is short; True when it did. Never raises."""
    if sock is None:
        return False
    if not _loopback_peer(sock):
        rtt = round_trip_us(sock)
        if rtt is None or rtt >= SHORT_RTT:
            return False
    with contextlib.suppress(OSError, AttributeError, TypeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        return True
    return False


def limit_transport_buffers(transport: Any, size: int = RELAY_BUFFER) -> bool:
    """``limit_buffers`` for the socket under an asyncio transport (TLS or not)."""
    if transport is None:
        return False
    return limit_buffers(transport.get_extra_info("socket"), size)
