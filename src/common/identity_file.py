"""Identity files: one 0600 text file with a private key, a certificate, the cluster's CAs
and the proxy address, for pctl on the auth host and for scripts and CI (``-i FILE``).

Layout::

    # pteleport identity file
    # proxy: HOST:PORT
    # cluster: NAME
    -----BEGIN PRIVATE KEY-----      the key
    -----BEGIN CERTIFICATE-----      the identity's certificate
    -----BEGIN CERTIFICATE-----      host CA (then user CA, db CA): trusted for the proxy
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.errors import BadParameter, NotLoggedIn

_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.S)
HEADER = "# pteleport identity file"


@dataclass(frozen=True)
class IdentityFile:
    key: bytes
    cert: bytes
    cas: bytes
    proxy: str
    cluster: str


def render(ident: IdentityFile) -> bytes:
    head = f"{HEADER}\n# proxy: {ident.proxy}\n# cluster: {ident.cluster}\n".encode()
    return head + ident.key + ident.cert + ident.cas


def parse(data: bytes, source: str = "identity file") -> IdentityFile:
    proxy = cluster = ""
    for line in data.decode("utf-8", "replace").splitlines():
        if line.startswith("# proxy:"):
            proxy = line.split(":", 1)[1].strip()
        elif line.startswith("# cluster:"):
            cluster = line.split(":", 1)[1].strip()
    blocks = [(m.group(1), m.group(0)) for m in _BLOCK.finditer(data)]
    keys = [b for kind, b in blocks if kind.endswith(b"PRIVATE KEY")]
    certs = [b for kind, b in blocks if kind == b"CERTIFICATE"]
    if not keys or len(certs) < 2:
        raise BadParameter(f"{source} is not a pteleport identity file (it needs a key, a certificate and the CAs)")
    fix = lambda b: b if b.endswith(b"\n") else b + b"\n"  # noqa: E731
    return IdentityFile(fix(keys[0]), fix(certs[0]), b"".join(fix(c) for c in certs[1:]), proxy, cluster)


def write_private(path: str | Path, data: bytes) -> None:
    """Write a secret atomically with mode 0600 from creation (no chmod race)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load(path: str | Path, warn: Callable[[str], None] | None = None) -> IdentityFile:
    path = Path(path)
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise NotLoggedIn(f'identity file {path} does not exist; create one with "pctl auth sign"') from None
    except PermissionError:
        raise NotLoggedIn(f"identity file {path} cannot be read by this user; check its owner and mode") from None
    if warn is not None and mode & (stat.S_IRWXG | stat.S_IRWXO):
        warn(f"warning: identity file {path} is readable by other users; run: chmod 600 {path}")
    return parse(data, f"identity file {path}")
