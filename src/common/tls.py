"""Keys, PEM helpers, the CA pin, and ``ssl.SSLContext`` builders for every mTLS hop.

One public port carries everything (DESIGN.md "One public port"); the ALPN value picks the
protocol. Clients that speak to the cluster's internal services (agents, ptsh after login,
pctl) send the SNI name ``INTERNAL_SNI``: the proxy then presents its host certificate,
signed by the cluster's host CA, which those clients verify. Browsers and the first
``ptsh login`` see the web certificate instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import ssl
import tempfile
from collections.abc import Iterator
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from common.errors import BadParameter, NotLoggedIn
from common.tls_alerts import AlertingContext

ALPN_HTTP = "http/1.1"
ALPN_POSTGRES = "pteleport-postgres"
ALPN_TUNNEL = "pteleport-reversetunnel"
INTERNAL_SNI = "pteleport.cluster.local"

PrivateKey = ec.EllipticCurvePrivateKey


def generate_private_key() -> PrivateKey:
    """A new ECDSA P-256 key: small, fast, and accepted by PostgreSQL and browsers."""
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(pem: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise BadParameter("the private key is not an ECDSA key")
    return key


def load_public_key(pem: bytes | str) -> ec.EllipticCurvePublicKey:
    """Parse a public key sent by a client; refuse anything but ECDSA P-256/P-384."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise BadParameter("public_key is not a PEM public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in ("secp256r1", "secp384r1"):
        raise BadParameter("public_key must be an ECDSA P-256 or P-384 key")
    return key


def load_cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def load_certs(bundle: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(bundle) if bundle.strip() else []


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def ca_pin(cert: x509.Certificate | bytes) -> str:
    """``sha256:<hex>`` of the certificate's DER SubjectPublicKeyInfo (Teleport's CA pin)."""
    if isinstance(cert, bytes):
        cert = load_cert(cert)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def pin_matches(cert: x509.Certificate, pins: list[str]) -> bool:
    actual = ca_pin(cert).encode()
    return any(hmac.compare_digest(actual, pin.strip().lower().encode()) for pin in pins)


def verify_issued_by(cert: x509.Certificate, cas: list[x509.Certificate], now: datetime) -> None:
    """Check that ``cert`` was signed by one of ``cas`` and is valid at ``now``.

    Raises NotLoggedIn with a sentence the user can act on.
    """
    if now < cert.not_valid_before_utc:
        raise NotLoggedIn("the certificate is not valid yet; check this machine's clock")
    if now >= cert.not_valid_after_utc:
        raise NotLoggedIn("the certificate has expired; log in again")
    for ca in cas:
        if ca.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, Exception):  # noqa: S112 - try the next CA
            continue
        return
    raise NotLoggedIn("the certificate was not issued by this cluster; log in to this cluster again")


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


def server_context(
    cert: bytes,
    key: bytes,
    *,
    client_cas: bytes = b"",
    client_auth: str = "optional",
    alpn: list[str] | None = None,
) -> ssl.SSLContext:
    """A TLS server context. ``client_auth`` is ``none``, ``optional`` or ``required``.

    A refused handshake sends the client its TLS alert (``common.tls_alerts``).
    """
    ctx = AlertingContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_cert_chain(ctx, cert, key)
    if client_auth != "none" and client_cas.strip():
        _load_cas(ctx, client_cas)
        ctx.verify_mode = ssl.CERT_REQUIRED if client_auth == "required" else ssl.CERT_OPTIONAL
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


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
