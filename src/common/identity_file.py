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
    """Read an identity file: missing is NotLoggedIn (exit 3), unreadable or not one is
    BadParameter (exit 1), readable by other users is a warning through ``warn``."""
    path = Path(path)
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise NotLoggedIn(
            f'identity file {path} does not exist; create one with "pctl auth sign --user=NAME --out={path}" '
            f'or "ptsh login --bot --token=TOKEN --out={path}"'
        ) from None
    except PermissionError:
        raise BadParameter(f"identity file {path} cannot be read by this user; check its owner and mode") from None
    except IsADirectoryError:
        raise BadParameter(f"identity file {path} is a directory; pass the file itself") from None
    except OSError as exc:
        raise BadParameter(f"identity file {path} cannot be read: {exc.strerror or exc}") from None
    if warn is not None and mode & (stat.S_IRWXG | stat.S_IRWXO):
        warn(f"WARNING: identity file {path} is readable by other users; run: chmod 600 {path}")
    return parse(data, f"identity file {path}")


def foreign_cluster_problem(path: str | Path, proxy: str, cluster: str, host_cas: bytes, exc: Exception) -> str | None:
    """After a call with an identity file failed to verify the proxy: was the file issued by another cluster?

    Asks the proxy for its CAs without trusting it (nothing secret is sent) and compares them
    with the file's host CA; the answer only picks the error message and is never trusted.
    None when this is not the explanation (e.g. the proxy is down).
    """
    from common.errors import ConnectionProblem

    if isinstance(exc, ConnectionProblem) and "securely" not in str(exc):
        return None
    from common.client import ClusterClient
    from common.tls import cert_pem, load_certs

    try:
        with ClusterClient(proxy, insecure=True) as probe:
            answer = probe.get("/v1/cas")
        theirs = {cert_pem(c) for c in load_certs(str((answer.get("cas") or {}).get("host", "")).encode())}
        ours = {cert_pem(c) for c in load_certs(host_cas)}
    except Exception:
        return None
    if not theirs or theirs & ours:
        return None
    name = str(answer.get("cluster_name", ""))
    other = f'cluster "{name}"' if name and name != cluster else "another cluster (its CAs differ)"
    return (
        f'the identity file {path} was issued by cluster "{cluster}", but the proxy at {proxy} belongs to '
        f'{other}; get an identity file from this cluster ("pctl auth sign" or "ptsh login --bot")'
    )


def host_cas(bundle: bytes) -> bytes:
    """Of an identity file's CAs, the host CA(s): the only ones that vouch for the proxy."""
    from cryptography.x509.oid import NameOID

    from common.tls import cert_pem, load_certs

    certs = load_certs(bundle)
    hosts = [
        c
        for c in certs
        if any(a.value == "host CA" for a in c.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME))
    ]
    return b"".join(cert_pem(c) for c in hosts) if hosts else bundle
