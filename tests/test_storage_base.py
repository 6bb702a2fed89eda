"""Pure helpers of the storage interface: prefix bounds and item checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from common.errors import BadParameter
from pteleport.storage.base import Item, check_key, normalise_item, prefix_end, utc_now


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        ("users/", "users0"),
        ("a", "b"),
        ("a%", "a&"),
        ("\ud7ff", "\ue000"),
        ("x\U0010ffff", "y"),
        ("\U0010ffff\U0010ffff", None),
        ("", None),
    ],
)
def test_prefix_end(prefix: str, end: str | None) -> None:
    assert prefix_end(prefix) == end


def test_every_key_with_the_prefix_sorts_below_the_end() -> None:
    for key in ["users/", "users/\U0010ffff", "users/zzz", "users/é"]:
        assert "users/" <= key < prefix_end("users/")  # type: ignore[operator]
    assert not "users0" < prefix_end("users/")  # type: ignore[operator]


def test_check_key() -> None:
    assert check_key("users/alice") == "users/alice"
    for bad in ["", "a\x00b", "\udc80"]:
        with pytest.raises(BadParameter):
            check_key(bad)


def test_normalise_item_converts_expiry_to_utc() -> None:
    local = datetime(2030, 1, 1, 12, tzinfo=timezone(timedelta(hours=-5)))
    item = normalise_item(Item("k", bytearray(b"v"), local))
    assert item.value == b"v"
    assert item.expires == datetime(2030, 1, 1, 17, tzinfo=UTC)
    assert item.expires.tzinfo is UTC


def test_default_clock_is_aware_utc() -> None:
    assert utc_now().utcoffset() == timedelta(0)
