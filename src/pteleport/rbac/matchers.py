"""Matching role selectors against database labels, and db_users / db_names entries against a request.

Label selector values (Teleport's ``MatchLabels``):

- ``"*"`` matches any value of that label (the label must exist);
- ``^...$`` is a regular expression, searched as Go's ``MatchString`` does;
- any other value with ``*`` in it is a glob (``us-west-*``), else it must be equal;
- a list of values matches if any entry matches;
- every key must match (AND); the key ``"*"`` with value ``"*"`` matches every database;
- an empty selector matches nothing.

db_users / db_names entries: equal, ``"*"`` (anything) or ``^...$`` (regular expression).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache

from common.errors import BadParameter

WILDCARD = "*"

Selector = Mapping[str, Sequence[str]]


def is_regex(pattern: str) -> bool:
    """Whether an entry is written as a regular expression (``^...$``)."""
    return len(pattern) >= 2 and pattern.startswith("^") and pattern.endswith("$")


@lru_cache(maxsize=4096)
def compile_regex(pattern: str) -> re.Pattern[str]:
    """Compile a ``^...$`` entry; raise ``BadParameter`` when it is not a valid expression."""
    try:
        return re.compile(pattern)
    except re.error as err:
        raise BadParameter(f'"{pattern}" is not a valid regular expression ({err})') from None


@lru_cache(maxsize=4096)
def _glob(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"(\*)", pattern)
    return re.compile("".join(".*" if part == WILDCARD else re.escape(part) for part in parts))


def _search(pattern: str, value: str) -> bool:
    try:
        return compile_regex(pattern).search(value) is not None
    except BadParameter:  # only reachable for values produced by templates: fail closed
        return False


def match_label_value(pattern: str, value: str) -> bool:
    """One selector value against one label value."""
    if pattern == WILDCARD:
        return True
    if is_regex(pattern):
        return _search(pattern, value)
    if WILDCARD in pattern:
        return _glob(pattern).fullmatch(value) is not None
    return pattern == value


def match_labels(selector: Selector, labels: Mapping[str, str]) -> bool:
    """Whether a normalized selector (label -> list of values) matches a database's labels."""
    if not selector:
        return False
    if list(selector.get(WILDCARD, ())) == [WILDCARD]:
        return True
    for key, patterns in selector.items():
        if key not in labels:
            return False
        value = labels[key]
        if not any(match_label_value(p, value) for p in patterns):
            return False
    return True


def match_entry(entries: Sequence[str], value: str) -> bool:
    """Whether a requested db user or db name is covered by a list of role entries."""
    for entry in entries:
        if entry == WILDCARD or entry == value:
            return True
        if is_regex(entry) and _search(entry, value):
            return True
    return False


def is_concrete(entry: str) -> bool:
    """Whether an entry names exactly one value (no wildcard, no regular expression)."""
    return entry != WILDCARD and not is_regex(entry)


def normalize_selector(selector: Mapping[str, str | Sequence[str]] | None) -> dict[str, list[str]]:
    """Selector values as lists (a single string becomes a one-entry list)."""
    if not selector:
        return {}
    return {k: [v] if isinstance(v, str) else list(v) for k, v in selector.items()}


def format_labels(labels: Mapping[str, str]) -> str:
    """``env=prod,team=db`` (sorted), or ``no labels``."""
    if not labels:
        return "no labels"
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
