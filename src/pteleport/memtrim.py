"""Give freed memory back to the system now and then (glibc's ``malloc_trim``).

Every session costs the proxy and the agent tens of KiB of C memory (OpenSSL's buffers,
the event loop's), allocated and freed by the C allocator. glibc keeps what was freed in
its heap, and after a burst of sessions much of it sits in pieces it does not reuse for
the next burst: measured, 500 sessions opened and closed grew the proxy and the agent by
about 20 MiB each, every time (tests/test_faults_e2e.py). ``malloc_trim(0)`` hands those
free pages back; run every ``EVERY`` seconds, memory stays at the level of one burst.
Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger("pteleport")
EVERY = 5.0


def _trimmer() -> Callable[[], object] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


async def run(every: float = EVERY) -> None:
    trim = _trimmer()
    if trim is None:
        return
    while True:
        await asyncio.sleep(every)
        try:
            await asyncio.to_thread(trim)
        except Exception as exc:  # never worth stopping for
            log.debug("malloc_trim failed: %s", exc)
            return
