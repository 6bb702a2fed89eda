"""The backend interface: items, the clock, and the rules every implementation shares.

A backend is a sorted key-value store. Keys are '/'-separated strings such as
``users/alice``; values are bytes. Each write gives the item a new revision taken from
a counter that only grows within one backend. An item whose ``expires`` is at or before
the clock's current time is gone for every read, for ``update``, ``compare_and_swap``
and ``delete``, and ``create`` may write over it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from common.errors import BadParameter

Clock = Callable[[], datetime]
"""Returns the current time as an aware UTC datetime."""


def utc_now() -> datetime:
    """The default clock: the system time in UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Item:
    """One stored value. ``revision`` is set by the backend; it is ignored on writes."""

    key: str
    value: bytes
    expires: datetime | None = None
    revision: int = 0


class Backend(Protocol):
    """A synchronous, thread-safe key-value store with revisions and expiry."""

    def get(self, key: str) -> Item:
        """The live item at ``key``; NotFound if there is none."""
        ...

    def create(self, item: Item) -> Item:
        """Store a new item; AlreadyExists if a live item has its key."""
        ...

    def put(self, item: Item) -> Item:
        """Create or overwrite."""
        ...

    def update(self, item: Item) -> Item:
        """Overwrite a live item; NotFound if there is none."""
        ...

    def compare_and_swap(self, expected: Item, new: Item) -> Item:
        """Overwrite only if the live item still has ``expected.value`` (and
        ``expected.revision`` unless that is 0); CompareFailed otherwise."""
        ...

    def delete(self, key: str) -> None:
        """Remove a live item; NotFound if there is none."""
        ...

    def get_range(self, prefix: str, limit: int | None = None) -> list[Item]:
        """Live items whose key starts with ``prefix``, sorted by key."""
        ...

    def delete_range(self, prefix: str) -> int:
        """Remove every item whose key starts with ``prefix``; the number of live ones removed."""
        ...

    def prune_expired(self) -> int:
        """Remove expired items now; how many were removed."""
        ...

    def close(self) -> None:
        """Release connections; later calls raise ConnectionProblem."""
        ...

    def watch(self) -> Any:
        """A ``storage.feed.ChangeFeed``: which kinds of items changed, in any process sharing this backend."""
        ...


_MAX_CODE_POINT = 0x10FFFF
_SURROGATES = range(0xD800, 0xE000)


def check_key(key: str) -> str:
    """Refuse keys no backend can store the same way: empty, NUL, lone surrogates."""
    if not isinstance(key, str) or not key:
        raise BadParameter("a storage key must be a non-empty string")
    _check_text(key, "key")
    return key


def check_prefix(prefix: str) -> str:
    """Like ``check_key`` but the empty prefix (every key) is allowed."""
    if not isinstance(prefix, str):
        raise BadParameter("a storage key prefix must be a string")
    _check_text(prefix, "key prefix")
    return prefix


def _check_text(text: str, what: str) -> None:
    if "\x00" in text:
        raise BadParameter(f"a storage {what} must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadParameter(f"a storage {what} must be valid Unicode text") from None


def check_limit(limit: int | None) -> int | None:
    """A range limit is None (no limit) or a positive integer."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise BadParameter("a range limit must be a positive integer")
    return limit


def prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix``.

    Range queries use ``prefix <= key < prefix_end(prefix)`` instead of LIKE, so
    ``%`` and ``_`` in keys mean nothing special. Code point order equals UTF-8 byte
    order, which is how SQLite (BINARY) and PostgreSQL (COLLATE "C") compare keys.
    None means there is no upper bound (empty prefix, or only U+10FFFF characters).
    """
    chars = prefix.rstrip(chr(_MAX_CODE_POINT))
    if not chars:
        return None
    nxt = ord(chars[-1]) + 1
    if nxt in _SURROGATES:
        nxt = _SURROGATES.stop
    return chars[:-1] + chr(nxt)


def normalise_item(item: Item) -> Item:
    """Check an item about to be written and bring ``expires`` to UTC."""
    if not isinstance(item, Item):
        raise BadParameter("expected a storage Item")
    check_key(item.key)
    value = item.value
    if isinstance(value, bytearray | memoryview):
        value = bytes(value)
    if not isinstance(value, bytes):
        raise BadParameter(f"the value of {item.key!r} must be bytes")
    expires = item.expires
    if expires is not None:
        if not isinstance(expires, datetime) or expires.tzinfo is None or expires.utcoffset() is None:
            raise BadParameter(f"the expiry of {item.key!r} must be a timezone-aware datetime")
        expires = expires.astimezone(UTC)
    return Item(key=item.key, value=value, expires=expires, revision=item.revision)


def check_swap(expected: Item, new: Item) -> tuple[Item, Item]:
    """Validate both sides of a compare-and-swap; they must name the same key."""
    if not isinstance(expected, Item):
        raise BadParameter("expected a storage Item")
    check_key(expected.key)
    new = normalise_item(new)
    if expected.key != new.key:
        raise BadParameter(f"compare-and-swap keys differ: {expected.key!r} and {new.key!r}")
    if not isinstance(expected.value, bytes | bytearray | memoryview):
        raise BadParameter(f"the expected value of {expected.key!r} must be bytes")
    return Item(expected.key, bytes(expected.value), expected.expires, expected.revision), new


def is_live(expires: datetime | None, now: datetime) -> bool:
    """Whether an item with this expiry is visible at ``now``."""
    return expires is None or expires > now
