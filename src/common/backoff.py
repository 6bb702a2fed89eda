"""Exponential backoff with jitter: the one retry schedule of every reconnect loop.

``Backoff(first, maximum)`` hands out delays that start at ``first`` and double up to
``maximum``; each is multiplied by a random factor in ``[1 - jitter, 1 + jitter)`` so that
many clients that lost one server do not all come back at the same instant. ``reset()``
after a success starts again from ``first``. The random source and the sleep function are
injected, so tests can check the schedule without waiting.

Used by the tunnel agent (dialling the proxy), the audit shipper (sending to auth), the
PostgreSQL storage connection (reconnecting) and the agent's first join.
"""

from __future__ import annotations

import asyncio
import random as _random
from collections.abc import Awaitable, Callable


class Backoff:
    """A growing, jittered delay; ``next_delay()`` to read it, ``await wait()`` to sleep it."""

    def __init__(
        self,
        first: float = 0.25,
        maximum: float = 10.0,
        *,
        factor: float = 2.0,
        jitter: float = 0.5,
        random: Callable[[], float] = _random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not 0 < first <= maximum:
            raise ValueError("backoff needs 0 < first <= maximum")
        if factor < 1 or not 0 <= jitter < 1:
            raise ValueError("backoff needs factor >= 1 and 0 <= jitter < 1")
        self.first = first
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self._random = random
        self._sleep = sleep
        self._base = first
        self.attempts = 0
        """How many delays were handed out since the last ``reset()``."""

    @property
    def longest(self) -> float:
        """The longest single delay this schedule can hand out (``maximum`` at the top of its jitter)."""
        return self.maximum * (1 + self.jitter)

    def next_delay(self) -> float:
        """The delay to wait now (jittered); the following one is ``factor`` times longer, up to ``maximum``."""
        delay = self._base * (1 - self.jitter + 2 * self.jitter * self._random())
        self._base = min(self._base * self.factor, self.maximum)
        self.attempts += 1
        return delay

    async def wait(self) -> float:
        """Sleep for ``next_delay()``; returns how long."""
        delay = self.next_delay()
        await self._sleep(delay)
        return delay

    async def sleep(self, delay: float) -> None:
        """Sleep a delay already taken from ``next_delay()`` (to log it first)."""
        await self._sleep(delay)

    def reset(self) -> None:
        """After a success: the next delay is ``first`` again."""
        self._base = self.first
        self.attempts = 0
