"""Identity <-> X.509 round trip, CA signing, CA pin and certificate verification."""

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from common.errors import NotLoggedIn
from common.identity import DatabaseRoute, Identity, identity_from_pem
from common.tls import ca_pin, generate_private_key, load_cert, verify_issued_by
from pteleport.ca.authority import new_authority, sign_identity

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def test_identity_round_trips_through_a_certificate():
    ca = new_authority("user", "example.com", NOW)
    ident = Identity(
        username="alice",
        roles=("access", "db"),
        traits={"db_users": ["alice", "reader"], "db_names": ["postgres"]},
        cluster_name="example.com",
        route=DatabaseRoute("aurora", "postgres", "alice", "postgres"),
        login_ip="127.0.0.1",
    )
    key = generate_private_key()
    pem = sign_identity(ca, key.public_key(), ident, NOW, NOW + timedelta(hours=12))
    back = identity_from_pem(pem)
    assert back.username == "alice"
    assert back.roles == ("access", "db")
    assert back.traits == ident.traits
    assert back.route == ident.route
    assert back.cluster_name == "example.com"
    assert back.login_ip == "127.0.0.1"
    assert back.expires == NOW + timedelta(hours=12)
    verify_issued_by(load_cert(pem), [ca.cert], NOW)


def test_a_long_trait_list_survives_long_form_der_lengths():
    ca = new_authority("user", "c", NOW)
    ident = Identity(username="bob", traits={"db_users": [f"user{i}" for i in range(100)]}, cluster_name="c")
    pem = sign_identity(ca, generate_private_key().public_key(), ident, NOW, NOW + timedelta(hours=1))
    assert identity_from_pem(pem).traits["db_users"][99] == "user99"


def test_foreign_and_expired_certificates_are_refused_with_a_reason():
    ours, theirs = new_authority("user", "c", NOW), new_authority("user", "c", NOW)
    ident = Identity(username="mallory", cluster_name="c")
    pem = sign_identity(theirs, generate_private_key().public_key(), ident, NOW, NOW + timedelta(hours=1))
    with pytest.raises(NotLoggedIn, match="not issued by this cluster"):
        verify_issued_by(load_cert(pem), [ours.cert], NOW)
    good = sign_identity(ours, generate_private_key().public_key(), ident, NOW, NOW + timedelta(hours=1))
    with pytest.raises(NotLoggedIn, match="expired"):
        verify_issued_by(load_cert(good), [ours.cert], NOW + timedelta(hours=2))


def test_ca_pin_is_sha256_of_the_subject_public_key_info():
    import hashlib

    from cryptography.hazmat.primitives import serialization

    ca = new_authority("host", "c", NOW)
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert ca_pin(cert) == "sha256:" + hashlib.sha256(spki).hexdigest()


def test_only_proxy_host_certificates_can_serve_the_internal_name():
    from pteleport.audit.memory_log import MemoryAuditLog
    from pteleport.auth.context import AuthSettings
    from pteleport.auth.server import AuthServer
    from pteleport.storage.memory import MemoryBackend

    auth = AuthServer(MemoryBackend(), MemoryAuditLog(), lambda: NOW, AuthSettings("c", "127.0.0.1:3080"))
    auth.init_cluster()
    key = generate_private_key().public_key()
    agent = load_cert(auth.certs.sign_host("agent-1", "Db", key, ["db-host"]))
    proxy = load_cert(auth.certs.sign_host("proxy-1", "Proxy", key, ["proxy.example.com"]))
    with pytest.raises(x509.ExtensionNotFound):
        agent.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    names = proxy.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "pteleport.cluster.local" in names.get_values_for_type(x509.DNSName)


def test_verified_identities_remember_a_certificate_but_not_past_its_expiry():
    from cryptography.hazmat.primitives import serialization

    from common.tls import VerifiedIdentities

    ours, theirs = new_authority("user", "c", NOW), new_authority("user", "c", NOW)
    ident = Identity(username="alice", cluster_name="c", route=DatabaseRoute("aurora", "", "alice", "postgres"))
    cert = load_cert(sign_identity(ours, generate_private_key().public_key(), ident, NOW, NOW + timedelta(hours=1)))
    der = cert.public_bytes(serialization.Encoding.DER)
    cache = VerifiedIdentities(size=2)
    first = cache.identity(der, [ours.cert], NOW)
    assert first.username == "alice" and cache.identity(der, [ours.cert], NOW + timedelta(minutes=59)) is first
    with pytest.raises(NotLoggedIn, match="expired"):
        cache.identity(der, [ours.cert], NOW + timedelta(hours=1))
    with pytest.raises(NotLoggedIn, match="not issued by this cluster"):  # remembered for one CA set only
        cache.identity(der, [theirs.cert], NOW)
