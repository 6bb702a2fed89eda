"""``HOST:PORT`` strings, split the same way everywhere (``[v6]:port`` too)."""

from __future__ import annotations

from common.errors import BadParameter


def split_host_port(addr: str, default_port: int | None = None) -> tuple[str, int]:
    """``(host, port)``; a missing port is ``default_port`` (an error when there is none)."""
    host, sep, port = addr.rpartition(":")
    if not sep:
        if default_port is None:
            raise BadParameter(f'"{addr}" is not HOST:PORT')
        return addr, default_port
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise BadParameter(f'"{addr}" is not HOST:PORT')
    return host.strip("[]"), int(port)
