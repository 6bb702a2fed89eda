"""Change notices from the backend's feed, delivered on the event loop to whoever cares.

``ChangeWatcher`` reads the backend's change feed (``storage.feed``) in a thread of its own
and calls the subscribers of each changed kind (``users``, ``roles``, ``locks``,
``db_servers``, ``proxies``...) on the loop. Subscribers only wake their own refresh (an
``asyncio.Event``), so a burst of changes costs one rebuild. Over PostgreSQL the notices
come from every process sharing the database (LISTEN/NOTIFY); over SQLite from every
process on the file. A backend without a feed leaves the subscribers to their polling.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from pteleport.storage.feed import ALL

log = logging.getLogger("pteleport.services.changes")

WAIT = 0.5  # seconds per feed wait (also how long stopping may take)


class ChangeWatcher:
    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self._subscribers: list[tuple[frozenset[str], Callable[[], None]]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._feed: Any = None
        self.running = False

    def subscribe(self, kinds: Iterable[str], callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the loop) after any item of these kinds changed."""
        self._subscribers.append((frozenset(kinds), callback))

    def start(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Open the feed and start reading it; False when this backend has none."""
        try:
            self._feed = self.backend.watch()
        except (NotImplementedError, AttributeError):
            return False
        except Exception as exc:
            log.warning("cannot open the storage change feed (%s); changes arrive by polling", exc)
            return False
        self.running = True
        self._thread = threading.Thread(target=self._read, args=(loop,), name="change-feed", daemon=True)
        self._thread.start()
        return True

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        while not self._stop.is_set():
            try:
                kinds = self._feed.wait(WAIT)
            except Exception as exc:
                log.debug("the change feed failed once: %s", exc)
                self._stop.wait(WAIT)
                kinds = {ALL}
            if kinds and not self._stop.is_set():
                try:
                    loop.call_soon_threadsafe(self.dispatch, kinds)
                except RuntimeError:  # the loop is closed
                    return

    def dispatch(self, kinds: set[str]) -> None:
        for wanted, callback in list(self._subscribers):
            if ALL in kinds or wanted & kinds:
                try:
                    callback()
                except Exception:
                    log.exception("a change subscriber failed")

    def stop(self) -> None:
        self._stop.set()
        self.running = False
        if self._thread is not None:
            self._thread.join(WAIT * 4)
        if self._feed is not None:
            try:
                self._feed.close()
            except Exception as exc:
                log.debug("closing the change feed: %s", exc)
