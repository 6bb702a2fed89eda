"""The plain ``key: value`` lines a ptsh profile is saved as, read without yaml.

``common.profile.ProfileStore.save`` writes profiles in this form and ``ptsh.savedcert``
reads them on ``ptsh db connect``'s quick path; importing yaml costs more than the rest of
such a command. A text in any other form returns None and goes through the YAML parser.
"""

from __future__ import annotations

import re

# Values YAML reads as the same string: a word starting with a letter (not a YAML boolean
# or null), or an IPv4 address with a port. Anything else goes through the YAML parser.
_PLAIN_VALUE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:@/-]*|[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?::[0-9]{1,5})?")
_YAML_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "null", "y", "n"})


def plain_mapping(text: str) -> dict[str, str] | None:
    """``key: value`` lines of plain words, as ``save`` writes them (read without importing
    yaml, which costs more than the rest of a ``ptsh db connect``); None for anything else."""
    doc: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if not sep or not key.isidentifier() or not _PLAIN_VALUE.fullmatch(value) or value.lower() in _YAML_WORDS:
            return None
        doc[key] = value
    return doc
