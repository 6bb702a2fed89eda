"""From command-line flags or a file to a running Process: logging, event loop, exit codes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from common.cli import DEBUG, eprint
from pteleport.config import Config, ConfigError, load_config, parse_config


def _setup_logging(config: Config) -> None:
    from pteleport import logs

    logs.setup(config, DEBUG["on"])


def _run(config: Config, reread: Callable[[], Config] | None = None) -> None:
    from pteleport.dbagent.join import JoinError
    from pteleport.process import Process

    _setup_logging(config)
    try:
        import uvloop  # type: ignore[import-not-found]

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(Process(config, reread, DEBUG["on"]).run())
    except JoinError as err:  # each cause of a failed join has its own exit code (docs/operations.md)
        eprint(f"ERROR: {err.message}")
        raise SystemExit(err.exit_code) from None


def run_start(path: str | None, **flags: Any) -> None:
    config = load_config(path) if path else Config()
    _apply_flags(config, **flags)

    def reread() -> Config:
        assert path is not None
        fresh = load_config(path)
        _apply_flags(fresh, **flags)
        return fresh

    _run(config, reread if path else None)


def run_config_dict(doc: dict) -> None:
    _run(parse_config(doc, "flags"))


def _apply_flags(
    config: Config,
    *,
    data_dir: str | None,
    listen: str | None,
    public_addr: str | None,
    cert_file: str | None,
    key_file: str | None,
    cluster_name: str | None,
    second_factor: str | None,
) -> None:
    if data_dir:
        config.teleport.data_dir = data_dir
    if listen:
        config.proxy_service.web_listen_addr = listen
    if public_addr:
        config.proxy_service.public_addr = public_addr
    if bool(cert_file) != bool(key_file):
        raise ConfigError("pass both --cert-file and --key-file, or neither")
    if cert_file and key_file:
        from pteleport.config import KeyPair

        config.proxy_service.https_keypairs = [KeyPair(cert_file=cert_file, key_file=key_file)]
    if cluster_name:
        config.auth_service.cluster_name = cluster_name
    if second_factor:
        if second_factor not in ("otp", "off"):
            raise ConfigError("--second-factor must be otp or off")
        config.auth_service.authentication.second_factor = second_factor  # type: ignore[assignment]
