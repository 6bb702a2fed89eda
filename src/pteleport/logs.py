"""The daemon's log: one handler on the root logger, from ``teleport.log``; reopened on SIGHUP.

``setup`` is called once at start (and by the auth worker process, which writes to the same
output); ``reload`` applies a new severity and output, and reopens a log file, so that
``logrotate`` can move the old one away and ``systemctl reload`` (SIGHUP) starts a new one.
"""

from __future__ import annotations

import logging
import sys

from pteleport.config import Config

FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"
# The auth worker's lines (pteleport.authworker) say so: "[pteleport.storage, auth worker]".
WORKER_FORMAT = "%(asctime)s %(levelname)s [%(name)s, auth worker] %(message)s"


def level_of(config: Config, debug: bool = False) -> str:
    level = "DEBUG" if debug else config.teleport.log.severity.upper()
    return {"WARN": "WARNING"}.get(level, level)


def _handler(output: str | None, fmt: str) -> logging.Handler:
    handler: logging.Handler
    if output in ("stderr", "", None):
        handler = logging.StreamHandler(sys.stderr)
    elif output == "stdout":
        handler = logging.StreamHandler(sys.stdout)
    else:
        handler = logging.FileHandler(output)
    handler.setFormatter(logging.Formatter(fmt))
    return handler


def setup(config: Config, debug: bool = False, worker: bool = False) -> None:
    root = logging.getLogger()
    old = list(root.handlers)
    root.handlers[:] = [_handler(config.teleport.log.output, WORKER_FORMAT if worker else FORMAT)]
    for handler in old:
        handler.close()
    root.setLevel(level_of(config, debug))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def reload(config: Config, debug: bool = False, worker: bool = False) -> None:
    """A new severity and output, and the log file (if any) opened again."""
    setup(config, debug, worker)
