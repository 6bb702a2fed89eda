"""Keys, PEM helpers, the CA pin, and ``ssl.SSLContext`` builders for every mTLS hop.

One public port carries everything (DESIGN.md "One public port"); the ALPN value picks the
protocol. Clients that speak to the cluster's internal services (agents, ptsh after login,
pctl) send the SNI name ``INTERNAL_SNI``: the proxy then presents its host certificate,
signed by the cluster's host CA, which those clients verify. Browsers and the first
``ptsh login`` see the web certificate instead.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
from collections import OrderedDict
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from common.errors import BadParameter, NotLoggedIn
from common.identity import Identity, identity_from_cert
from common.tls_alerts import AlertingContext

# The TLS contexts live in common.tlsctx (no cryptography import: the CLIs' hot paths use them).
from common.tlsctx import (
    ALPN_HTTP,
    ALPN_POSTGRES,
    ALPN_TUNNEL,
    INTERNAL_SNI,
    _load_cas,
    client_context,
    describe_ssl_error,
    load_cert_chain,
)

__all__ = ["ALPN_HTTP", "ALPN_POSTGRES", "ALPN_TUNNEL", "INTERNAL_SNI", "client_context", "describe_ssl_error",
           "load_cert_chain"]

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


class VerifiedIdentities:
    """The identities of client certificates already verified, by their DER bytes (least recent dropped first).

    The proxy and the agent read the identity from the client's certificate for every
    database session; a tunnel sends the same certificate for hours. The signature check and
    the parse are done once per (certificate, CA set); the validity period is checked against
    ``now`` on every call, so an expired certificate is refused exactly as without the cache.
    """

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._known: OrderedDict[tuple[bytes, tuple[x509.Certificate, ...]], tuple[x509.Certificate, Identity]] = (
            OrderedDict()
        )

    def identity(self, der: bytes, cas: list[x509.Certificate], now: datetime) -> Identity:
        key = (der, tuple(cas))
        known = self._known.get(key)
        if known is not None and known[0].not_valid_before_utc <= now < known[0].not_valid_after_utc:
            self._known.move_to_end(key)
            return known[1]
        cert = x509.load_der_x509_certificate(der)
        verify_issued_by(cert, cas, now)
        identity = identity_from_cert(cert)
        self._known[key] = (cert, identity)
        while len(self._known) > self.size:
            self._known.popitem(last=False)
        return identity
