"""The cluster's certificate authorities and the signing of certificates (pure: no I/O, no policy).

Three CAs exist per cluster (DESIGN.md "Identity in certificates"):

- ``user``: signs user certificates (people, bots, the admin identity);
- ``host``: signs proxies' and agents' certificates;
- ``db``: signs the client certificates agents present to self-hosted PostgreSQL and the
  server certificates made with ``pctl auth sign --format=db``.

Who may get what is decided by the auth service; this module only signs what it is told.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.identity import CERT_BACKDATE, Identity, extensions_for, subject_for
from common.tls import (
    PrivateKey,
    cert_pem,
    generate_private_key,
    load_cert,
    load_private_key,
    private_key_pem,
)

CA_TYPES = ("user", "host", "db")
CA_VALIDITY = timedelta(days=3650)
CLOCK_SKEW = CERT_BACKDATE


@dataclass(frozen=True)
class CertAuthority:
    """One CA: its type, cluster, certificate and private key (both PEM)."""

    type: str
    cluster_name: str
    cert_pem: bytes
    key_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        return load_cert(self.cert_pem)

    @property
    def key(self) -> PrivateKey:
        return load_private_key(self.key_pem)


def new_authority(ca_type: str, cluster_name: str, now: datetime) -> CertAuthority:
    """A fresh self-signed CA for ``cluster_name``."""
    if ca_type not in CA_TYPES:
        raise ValueError(f"unknown CA type {ca_type}")
    key = generate_private_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cluster_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"{ca_type} CA"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertAuthority(ca_type, cluster_name, cert_pem(cert), private_key_pem(key))


def _leaf_builder(
    ca: CertAuthority,
    subject: x509.Name,
    public_key: object,
    not_before: datetime,
    not_after: datetime,
    *,
    server_names: list[str],
    client: bool,
    server: bool,
) -> x509.CertificateBuilder:
    ca_cert = ca.cert
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    usages = []
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server_names:
        sans: list[x509.GeneralName] = []
        for name in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder


def sign_identity(
    ca: CertAuthority,
    public_key: object,
    identity: Identity,
    not_before: datetime,
    not_after: datetime,
    *,
    server_names: list[str] | None = None,
) -> bytes:
    """Sign a certificate carrying ``identity`` for ``public_key``; returns PEM.

    Host identities (``server_names`` given) are valid for both client and server use.
    """
    builder = _leaf_builder(
        ca,
        subject_for(identity),
        public_key,
        not_before,
        not_after,
        server_names=server_names or [],
        client=True,
        server=bool(server_names),
    )
    for ext in extensions_for(identity):
        builder = builder.add_extension(ext, critical=False)
    return cert_pem(builder.sign(ca.key, hashes.SHA256()))


def sign_plain(
    ca: CertAuthority,
    public_key: object,
    common_name: str,
    not_before: datetime,
    not_after: datetime,
    *,
    server_names: list[str] | None = None,
) -> bytes:
    """A certificate with only a common name: Postgres client certs (CN = db user) and server certs."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = _leaf_builder(
        ca,
        subject,
        public_key,
        not_before,
        not_after,
        server_names=server_names or [],
        client=not server_names,
        server=bool(server_names),
    )
    return cert_pem(builder.sign(ca.key, hashes.SHA256()))


def self_signed_web_cert(hosts: list[str], now: datetime) -> tuple[bytes, bytes]:
    """The proxy's default web certificate when none is configured: (cert PEM, key PEM)."""
    key = generate_private_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "localhost")])
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert_pem(cert), private_key_pem(key)
