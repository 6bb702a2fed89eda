"""From command-line flags or a file to a running Process: logging, event loop, exit codes."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from common.cli import DEBUG
from pteleport.config import Config, ConfigError, load_config, parse_config


def _setup_logging(config: Config) -> None:
    level = "DEBUG" if DEBUG["on"] else config.teleport.log.severity.upper()
    level = {"WARN": "WARNING"}.get(level, level)
    output = config.teleport.log.output
    handler: logging.Handler
    if output in ("stderr", "", None):
        handler = logging.StreamHandler(sys.stderr)
    elif output == "stdout":
        handler = logging.StreamHandler(sys.stdout)
    else:
        handler = logging.FileHandler(output)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def _run(config: Config) -> None:
    from pteleport.process import Process

    _setup_logging(config)
    try:
        import uvloop  # type: ignore[import-not-found]

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(Process(config).run())


def run_start(path: str | None, **flags: Any) -> None:
    config = load_config(path) if path else Config()
    _apply_flags(config, **flags)
    _run(config)


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
