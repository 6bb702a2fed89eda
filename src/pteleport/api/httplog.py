"""Malformed HTTP requests: one WARNING line each, rate-limited, without a traceback.

aiohttp's request handler logs every request it cannot parse (a header line past its
limit, a bad request line, a bad header) on the ``aiohttp.server`` logger, as an error
with the whole traceback: a few hundred such requests write hundreds of kilobytes.
``MalformedRequestFilter`` sits on that logger and turns each such record into one line,
``refused a malformed HTTP request from ADDR: WHAT``, that names the kind of problem but
never echoes the request (which may hold a token in its path). At most ``per_second``
lines pass each second; the rest are counted, and ``flush`` (called by the API every few
seconds and at shutdown) writes one ``suppressed K similar lines`` summary.

aiohttp logs a first request that is not HTTP at all (``BadHttpMethod``) at DEBUG. Behind
our TLS and ALPN router such a request is as odd as any other malformed one, so it gets
the same WARNING line: ``install`` lets DEBUG records reach the filter, which passes other
records only at the level the rest of aiohttp's loggers have.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    LineTooLong,
)

SERVER_LOGGER = "aiohttp.server"
PER_SECOND = 5
log = logging.getLogger("pteleport.api")

_WHAT: list[tuple[type[HttpProcessingError], str]] = [
    (LineTooLong, "a request line or header is too long"),
    (BadHttpMethod, "not an HTTP method"),
    (BadStatusLine, "a malformed request line"),
    (InvalidHeader, "a malformed header"),
    (BadHttpMessage, "a malformed request"),
]


def describe(exc: HttpProcessingError) -> str:
    """What was wrong, in words and aiohttp's class name, without any of the request's bytes."""
    for cls, words in _WHAT:
        if isinstance(exc, cls):
            return f"{words} ({type(exc).__name__}, answered HTTP {exc.code or 400})"
    return f"{type(exc).__name__} (answered HTTP {exc.code or 400})"


class MalformedRequestFilter(logging.Filter):
    """Rewrites aiohttp's parse-error records into one rate-limited WARNING line."""

    def __init__(self, per_second: int = PER_SECOND, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.per_second = per_second
        self.clock = clock
        self._second = -1
        self._passed = 0
        self._suppressed = 0
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return record.levelno >= logging.getLogger("aiohttp").getEffectiveLevel()
        second = int(self.clock())
        with self._lock:
            if second != self._second:
                self._second, self._passed = second, 0
            self._passed += 1
            if self._passed > self.per_second:
                self._suppressed += 1
                return False
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "an unknown address"
        record.msg = "refused a malformed HTTP request from %s: %s"
        record.args = (remote, describe(exc))
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True

    def flush(self) -> int:
        """Write the count of lines held back since the last flush (if any); that count."""
        with self._lock:
            suppressed, self._suppressed = self._suppressed, 0
        if suppressed:
            log.warning("suppressed %d similar lines about malformed HTTP requests", suppressed)
        return suppressed


def install() -> MalformedRequestFilter:
    """The filter on aiohttp's server logger (added once per process)."""
    logger = logging.getLogger(SERVER_LOGGER)
    for existing in logger.filters:
        if isinstance(existing, MalformedRequestFilter):
            return existing
    found = MalformedRequestFilter()
    logger.addFilter(found)
    logger.setLevel(logging.DEBUG)  # the filter applies the real level (see the module docstring)
    return found
