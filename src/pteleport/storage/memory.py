"""In-memory backend for tests: a dict behind a lock, with the same rules as the others."""

from __future__ import annotations

import threading

from common.errors import AlreadyExists, CompareFailed, ConnectionProblem, NotFound

from .base import (
    Clock,
    Item,
    check_key,
    check_limit,
    check_prefix,
    check_swap,
    is_live,
    normalise_item,
    utc_now,
)
from .feed import MemoryFeed


class MemoryBackend:
    """A Backend that lives as long as the object; thread-safe."""

    def __init__(self, clock: Clock = utc_now) -> None:
        self._clock = clock
        self._items: dict[str, Item] = {}
        self._revision = 0
        self._lock = threading.RLock()
        self._closed = False
        self._feeds: list[MemoryFeed] = []

    def watch(self) -> MemoryFeed:
        """A change feed told of every write: see ``storage.feed``."""
        feed = MemoryFeed(on_close=self._feeds.remove)
        self._feeds.append(feed)
        return feed

    def _changed(self, key: str) -> None:
        for feed in list(self._feeds):
            feed.changed(key)

    def get(self, key: str) -> Item:
        check_key(key)
        with self._lock:
            self._check_open()
            item = self._live(key)
            if item is None:
                raise NotFound(f"{key!r} not found")
            return item

    def create(self, item: Item) -> Item:
        item = normalise_item(item)
        with self._lock:
            self._check_open()
            if self._live(item.key) is not None:
                raise AlreadyExists(f"{item.key!r} already exists")
            return self._store(item)

    def put(self, item: Item) -> Item:
        item = normalise_item(item)
        with self._lock:
            self._check_open()
            return self._store(item)

    def update(self, item: Item) -> Item:
        item = normalise_item(item)
        with self._lock:
            self._check_open()
            if self._live(item.key) is None:
                raise NotFound(f"{item.key!r} not found")
            return self._store(item)

    def compare_and_swap(self, expected: Item, new: Item) -> Item:
        expected, new = check_swap(expected, new)
        with self._lock:
            self._check_open()
            current = self._live(expected.key)
            if (
                current is None
                or current.value != expected.value
                or (expected.revision != 0 and current.revision != expected.revision)
            ):
                raise CompareFailed(f"{expected.key!r} was changed by someone else; read it again and retry")
            return self._store(new)

    def delete(self, key: str) -> None:
        check_key(key)
        with self._lock:
            self._check_open()
            item = self._items.pop(key, None)
            if item is None or not is_live(item.expires, self._clock()):
                raise NotFound(f"{key!r} not found")
            self._changed(key)

    def get_range(self, prefix: str, limit: int | None = None) -> list[Item]:
        check_prefix(prefix)
        check_limit(limit)
        with self._lock:
            self._check_open()
            now = self._clock()
            found = sorted(
                (item for key, item in self._items.items() if key.startswith(prefix)),
                key=lambda item: item.key,
            )
            live = [item for item in found if is_live(item.expires, now)]
            return live if limit is None else live[:limit]

    def delete_range(self, prefix: str) -> int:
        check_prefix(prefix)
        with self._lock:
            self._check_open()
            now = self._clock()
            keys = [key for key in self._items if key.startswith(prefix)]
            removed = [self._items.pop(key) for key in keys]
            for key in keys:
                self._changed(key)
            return sum(1 for item in removed if is_live(item.expires, now))

    def prune_expired(self) -> int:
        with self._lock:
            self._check_open()
            now = self._clock()
            expired = [key for key, item in self._items.items() if not is_live(item.expires, now)]
            for key in expired:
                del self._items[key]
            return len(expired)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._items.clear()

    def _live(self, key: str) -> Item | None:
        item = self._items.get(key)
        if item is None:
            return None
        if not is_live(item.expires, self._clock()):
            del self._items[key]
            return None
        return item

    def _store(self, item: Item) -> Item:
        self._revision += 1
        stored = Item(item.key, item.value, item.expires, self._revision)
        self._items[item.key] = stored
        self._changed(item.key)
        return stored

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionProblem("the storage backend is closed")
