"""common.text: what the CLIs print of text that came from outside."""

from __future__ import annotations

import pytest

from common.text import safe_text, table


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("plain words, ünïcode ✓", "plain words, ünïcode ✓"),
        ("", ""),
        ("red\x1b[31m text", "red\\x1b[31m text"),  # a terminal escape is shown, not obeyed
        ("two\nlines\ttab", "two\\nlines\\ttab"),
        (42, "42"),
    ],
)
def test_safe_text_escapes_only_what_is_not_printable(value: object, shown: str) -> None:
    assert safe_text(value) == shown


def test_table_aligns_columns_and_drops_trailing_spaces() -> None:
    assert table(["Name", "Labels"], [["a", ""], ["longer", "env=dev"]]) == (
        "Name   Labels\n------ -------\na\nlonger env=dev"
    )
