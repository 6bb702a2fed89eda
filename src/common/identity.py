"""Who a certificate speaks for: ``Identity`` and its round trip through X.509.

Subject: CN = user or host name, O = roles (one RDN value each), OU = the identity's kind
(``user``, ``host``, ``admin``, ``bot``). Everything else travels in X.509 extensions under
one private OID arc, ``2.25.<our UUID>`` (2.25 is the ITU arc for UUID-derived OIDs, so
no registration is needed):

=======================  ==========================================  ====================
OID (under the arc)       meaning                                     value (DER UTF8String)
=======================  ==========================================  ====================
``.1``                    cluster name                                text
``.2``                    traits                                      JSON object of lists
``.3``                    route to database: service name             text
``.4``                    route to database: protocol                 text
``.5``                    route to database: db user                  text
``.6``                    route to database: db name                  text
``.7``                    login IP                                    text
``.8``                    host id / system role of a host identity    text
``.9``                    impersonator (who signed for this user)     text
``.10``                   scope of a database service (host)         JSON ``{"db_names": [...], "db_labels": {k: [v]}}``
``.11``                   access requests assumed (their roles are    JSON list of request ids
                          in O)
=======================  ==========================================  ====================

Expiry is the certificate's NotAfter; the moment of issue is its NotBefore plus
``CERT_BACKDATE`` (certificates are backdated a little for clock skew). Nothing here does I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.x509.oid import NameOID

OID_ARC = "2.25.238447025962186813958893584003318155117"

OID_CLUSTER = x509.ObjectIdentifier(OID_ARC + ".1")
OID_TRAITS = x509.ObjectIdentifier(OID_ARC + ".2")
OID_DB_SERVICE = x509.ObjectIdentifier(OID_ARC + ".3")
OID_DB_PROTOCOL = x509.ObjectIdentifier(OID_ARC + ".4")
OID_DB_USER = x509.ObjectIdentifier(OID_ARC + ".5")
OID_DB_NAME = x509.ObjectIdentifier(OID_ARC + ".6")
OID_LOGIN_IP = x509.ObjectIdentifier(OID_ARC + ".7")
OID_SYSTEM_ROLE = x509.ObjectIdentifier(OID_ARC + ".8")
OID_IMPERSONATOR = x509.ObjectIdentifier(OID_ARC + ".9")
OID_HOST_SCOPE = x509.ObjectIdentifier(OID_ARC + ".10")
OID_ACTIVE_REQUESTS = x509.ObjectIdentifier(OID_ARC + ".11")

CERT_BACKDATE = timedelta(minutes=1)
"""Certificates start this much before they are issued, so a peer whose clock is a little behind accepts them."""

KIND_USER = "user"
KIND_HOST = "host"
KIND_ADMIN = "admin"
KIND_BOT = "bot"
KINDS = (KIND_USER, KIND_HOST, KIND_ADMIN, KIND_BOT)


@dataclass(frozen=True)
class DatabaseRoute:
    """Where a database certificate may be used: which database, as which db user."""

    service_name: str
    protocol: str = "postgres"
    username: str = ""
    database: str = ""


@dataclass(frozen=True)
class HostScope:
    """Which databases a database service (agent) may serve, bound to its host identity at join.

    Empty ``db_names`` means any name; empty ``db_labels`` means any labels. A scope with
    neither is the same as no scope (Teleport's behaviour: any database).
    """

    db_names: tuple[str, ...] = ()
    db_labels: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    def of(cls, db_names: list[str] | tuple[str, ...] = (), db_labels: dict[str, list[str]] | None = None) -> HostScope:
        labels = tuple(sorted((k, tuple(v)) for k, v in (db_labels or {}).items()))
        return cls(tuple(db_names), labels)

    @property
    def labels(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.db_labels}

    @property
    def unscoped(self) -> bool:
        return not self.db_names and not self.db_labels

    def to_dict(self) -> dict[str, object]:
        return {"db_names": list(self.db_names), "db_labels": self.labels}

    @classmethod
    def from_dict(cls, doc: dict | None) -> HostScope:
        doc = doc or {}
        return cls.of(list(doc.get("db_names") or []), dict(doc.get("db_labels") or {}))


@dataclass(frozen=True)
class Identity:
    """The subject of a certificate issued by one of the cluster's CAs."""

    username: str
    roles: tuple[str, ...] = ()
    kind: str = KIND_USER
    traits: dict[str, list[str]] = field(default_factory=dict)
    cluster_name: str = ""
    route: DatabaseRoute | None = None
    login_ip: str = ""
    system_role: str = ""
    impersonator: str = ""
    expires: datetime | None = None
    issued: datetime | None = None
    host_scope: HostScope | None = None
    active_requests: tuple[str, ...] = ()

    def with_route(self, route: DatabaseRoute | None) -> Identity:
        return replace(self, route=route)

    @property
    def is_admin(self) -> bool:
        return self.kind == KIND_ADMIN

    @property
    def is_host(self) -> bool:
        return self.kind == KIND_HOST


def _der_utf8(text: str) -> bytes:
    data = text.encode("utf-8")
    length = len(data)
    if length < 0x80:
        header = bytes([0x0C, length])
    else:
        octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
        header = bytes([0x0C, 0x80 | len(octets)]) + octets
    return header + data


def _read_der_utf8(raw: bytes) -> str:
    if len(raw) < 2 or raw[0] != 0x0C:
        raise ValueError("extension is not a UTF8String")
    first = raw[1]
    if first < 0x80:
        start, length = 2, first
    else:
        count = first & 0x7F
        start = 2 + count
        length = int.from_bytes(raw[2:start], "big")
    if start + length != len(raw):
        raise ValueError("extension length does not match its content")
    return raw[start : start + length].decode("utf-8")


def subject_for(identity: Identity) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, identity.username)]
    attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, role) for role in identity.roles]
    attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.kind))
    return x509.Name(attrs)


def extensions_for(identity: Identity) -> list[x509.UnrecognizedExtension]:
    """The identity's extensions, ready to add to a certificate builder (non-critical)."""
    values: list[tuple[x509.ObjectIdentifier, str]] = [(OID_CLUSTER, identity.cluster_name)]
    if identity.traits:
        values.append((OID_TRAITS, json.dumps(identity.traits, sort_keys=True, separators=(",", ":"))))
    if identity.route is not None:
        values += [
            (OID_DB_SERVICE, identity.route.service_name),
            (OID_DB_PROTOCOL, identity.route.protocol),
            (OID_DB_USER, identity.route.username),
            (OID_DB_NAME, identity.route.database),
        ]
    if identity.login_ip:
        values.append((OID_LOGIN_IP, identity.login_ip))
    if identity.system_role:
        values.append((OID_SYSTEM_ROLE, identity.system_role))
    if identity.impersonator:
        values.append((OID_IMPERSONATOR, identity.impersonator))
    if identity.host_scope is not None and not identity.host_scope.unscoped:
        values.append((OID_HOST_SCOPE, json.dumps(identity.host_scope.to_dict(), sort_keys=True, separators=(",", ":"))))
    if identity.active_requests:
        values.append((OID_ACTIVE_REQUESTS, json.dumps(list(identity.active_requests), separators=(",", ":"))))
    return [x509.UnrecognizedExtension(oid, _der_utf8(value)) for oid, value in values]


def identity_from_cert(cert: x509.Certificate) -> Identity:
    """Read the identity back from a certificate (signature and expiry are checked elsewhere)."""
    subject = cert.subject
    cn = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cn:
        raise ValueError("certificate has no common name")
    roles = tuple(str(a.value) for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))
    ou = subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    kind = str(ou[0].value) if ou else KIND_USER
    ext: dict[str, str] = {}
    for extension in cert.extensions:
        if extension.oid.dotted_string.startswith(OID_ARC + "."):
            value = extension.value
            if isinstance(value, x509.UnrecognizedExtension):
                ext[extension.oid.dotted_string] = _read_der_utf8(value.value)
    route = None
    if OID_DB_SERVICE.dotted_string in ext:
        route = DatabaseRoute(
            service_name=ext[OID_DB_SERVICE.dotted_string],
            protocol=ext.get(OID_DB_PROTOCOL.dotted_string, "postgres"),
            username=ext.get(OID_DB_USER.dotted_string, ""),
            database=ext.get(OID_DB_NAME.dotted_string, ""),
        )
    traits_raw = ext.get(OID_TRAITS.dotted_string)
    traits = {k: list(v) for k, v in json.loads(traits_raw).items()} if traits_raw else {}
    scope_raw = ext.get(OID_HOST_SCOPE.dotted_string)
    host_scope = HostScope.from_dict(json.loads(scope_raw)) if scope_raw else None
    requests_raw = ext.get(OID_ACTIVE_REQUESTS.dotted_string)
    active_requests = tuple(str(r) for r in json.loads(requests_raw)) if requests_raw else ()
    return Identity(
        username=str(cn[0].value),
        roles=roles,
        kind=kind,
        traits=traits,
        cluster_name=ext.get(OID_CLUSTER.dotted_string, ""),
        route=route,
        login_ip=ext.get(OID_LOGIN_IP.dotted_string, ""),
        system_role=ext.get(OID_SYSTEM_ROLE.dotted_string, ""),
        impersonator=ext.get(OID_IMPERSONATOR.dotted_string, ""),
        expires=cert.not_valid_after_utc.astimezone(UTC),
        issued=cert.not_valid_before_utc.astimezone(UTC) + CERT_BACKDATE,
        host_scope=host_scope,
        active_requests=active_requests,
    )


def identity_from_pem(cert_pem: bytes) -> Identity:
    return identity_from_cert(x509.load_pem_x509_certificate(cert_pem))


def identity_from_der(cert_der: bytes) -> Identity:
    return identity_from_cert(x509.load_der_x509_certificate(cert_der))
