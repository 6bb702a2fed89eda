"""Who is calling: the identity in the verified client certificate, checked against the right CA."""

from __future__ import annotations

from aiohttp import web
from cryptography import x509

from common.errors import NotLoggedIn
from common.identity import Identity, identity_from_cert
from common.tls import verify_issued_by
from pteleport.auth.server import AuthServer


def peer_certificate(request: web.Request) -> x509.Certificate | None:
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der) if der else None


def caller(request: web.Request, auth: AuthServer) -> Identity:
    """The caller's identity, or NotLoggedIn with what to do."""
    cert = peer_certificate(request)
    if cert is None:
        raise NotLoggedIn('this request needs a certificate; log in with "ptsh login" first')
    identity = identity_from_cert(cert)
    ca = auth.ctx.ca("host" if identity.is_host else "user").cert
    verify_issued_by(cert, [ca], auth.ctx.clock())
    # Locks, deleted users and roles taken away stop certificates at once, not when they expire.
    auth.access.check(identity)
    return identity


def remote_addr(request: web.Request) -> str:
    """The client's ``host:port`` as the socket sees it (what per-address limits count by)."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return f"{peer[0]}:{peer[1]}" if peer else ""
