"""What a CLI needs to know of one of its certificates, kept next to it so that reading it
later needs no X.509 parser (importing ``cryptography`` costs more than the rest of a
``ptsh db connect``).

``<cert file>.facts`` (0600) holds the SHA-256 of the certificate's PEM and, for that
certificate, the user, roles, cluster, expiry and database route. ``load`` answers None when
the file is missing, damaged, or for another certificate (``ptsh login`` wrote a new one);
the caller then parses the certificate and ``save``\\ s its facts. The certificate itself is
still what is sent and verified: the facts only steer the CLI (is it expired, which db user).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

SUFFIX = ".facts"


def path_for(cert_path: Path) -> Path:
    return cert_path.with_name(cert_path.name + SUFFIX)


def _digest(pem: bytes) -> str:
    return hashlib.sha256(pem).hexdigest()


def load(cert_path: Path, pem: bytes) -> dict[str, Any] | None:
    """The facts saved for exactly this certificate, else None."""
    try:
        doc = json.loads(path_for(cert_path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("sha256") != _digest(pem) or not isinstance(doc.get("facts"), dict):
        return None
    return doc["facts"]


def save(cert_path: Path, pem: bytes, facts: dict[str, Any]) -> None:
    """Keep ``facts`` for this certificate (best effort: a failure only costs the next read a parse)."""
    from common.identity_file import write_private

    try:
        write_private(path_for(cert_path), json.dumps({"sha256": _digest(pem), "facts": facts}).encode())
    except OSError:
        pass


def forget(cert_path: Path) -> None:
    path_for(cert_path).unlink(missing_ok=True)
