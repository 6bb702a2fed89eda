"""TLS contexts from PEM bytes, with the standard library only (no cryptography import).

``client_context`` and ``load_cert_chain`` are what ``ptsh db connect`` needs before psql
starts; ``common.tls`` re-exports them with the rest of the certificate helpers.

"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Iterator

ALPN_HTTP = "http/1.1"
ALPN_POSTGRES = "pteleport-postgres"
ALPN_TUNNEL = "pteleport-reversetunnel"
INTERNAL_SNI = "pteleport.cluster.local"


@contextlib.contextmanager
def _pem_files(*blobs: bytes) -> Iterator[list[str]]:
    """Write PEM blobs where only this process can read them, for APIs that want paths.

    On Linux the data lives in anonymous memory files (never on disk); elsewhere in a
    0700 temporary directory that is removed right after use.
    """
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fds = []
        try:
            for blob in blobs:
                fd = os.memfd_create("pteleport-pem")
                os.write(fd, blob)
                fds.append(fd)
            yield [f"/proc/self/fd/{fd}" for fd in fds]
        finally:
            for fd in fds:
                os.close(fd)
        return
    import tempfile  # (only here: memfd_create is the common case)

    with tempfile.TemporaryDirectory(prefix="pteleport-") as tmp:
        paths = []
        for i, blob in enumerate(blobs):
            path = os.path.join(tmp, f"{i}.pem")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
            paths.append(path)
        yield paths


def load_cert_chain(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    with _pem_files(cert, key) as (cert_path, key_path):
        ctx.load_cert_chain(cert_path, key_path)


def _load_cas(ctx: ssl.SSLContext, ca_pems: bytes) -> None:
    if ca_pems.strip():
        ctx.load_verify_locations(cadata=ca_pems.decode("ascii"))


def client_context(
    *,
    cas: bytes | None = None,
    cert: bytes | None = None,
    key: bytes | None = None,
    alpn: list[str] | None = None,
    insecure: bool = False,
    ca_file: str | None = None,
) -> ssl.SSLContext:
    """A TLS client context: trust ``cas`` (or the system store), present ``cert`` if given."""
    ctx = ssl.create_default_context(cafile=ca_file) if cas is None else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cas is not None:
        _load_cas(ctx, cas)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None and key is not None:
        load_cert_chain(ctx, cert, key)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def describe_ssl_error(exc: BaseException, relogin: str = "log in again") -> str:
    """Turn an OpenSSL alert seen by a client into words a user can act on.

    The proxy answers a refused client certificate with the alert OpenSSL chose
    (``common.tls_alerts``); ``relogin`` is what the user should do then.
    """
    text = str(exc)
    upper = text.upper()
    if "CERTIFICATE_EXPIRED" in upper or "certificate expired" in text:
        return f"the cluster refused your certificate because it has expired; {relogin}"
    if "UNKNOWN_CA" in upper or "unknown ca" in text:
        return f"the cluster refused your certificate: it was not issued by this cluster; {relogin}"
    if "CERTIFICATE_REQUIRED" in upper or "certificate required" in text:
        return f"the cluster refused your certificate because none was sent; {relogin}"
    if "CERTIFICATE_VERIFY_FAILED" in upper:
        return (
            "the proxy's certificate could not be verified"
            f" ({getattr(exc, 'verify_message', '') or text}); pass --insecure only for a test cluster,"
            " or --ca-file with the certificate that signed the proxy's"
        )
    if "BAD_CERTIFICATE" in upper or "DECRYPT" in upper:
        return f"the cluster refused your certificate (it is damaged or was altered); {relogin}"
    return f"TLS handshake failed: {text}"
