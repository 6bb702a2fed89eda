"""Who is calling: the identity in the verified client certificate, checked against the right CA.

``peer_der`` reads the certificate off the TLS connection (on the event loop: the SSL
object belongs to it); ``caller_from_der`` verifies it and checks the access snapshot,
which may read storage, so the API calls it in its worker threads (``api.offload``).
"""

from __future__ import annotations

from aiohttp import web
from cryptography import x509

from common.errors import NotLoggedIn
from common.identity import Identity, identity_from_cert
from common.tls import verify_issued_by
from pteleport.auth.server import AuthServer


def peer_der(request: web.Request) -> bytes | None:
    """The client certificate (DER) of the request's TLS connection, if it sent one."""
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    if ssl_object is None:
        return None
    return ssl_object.getpeercert(binary_form=True) or None


def peer_certificate(request: web.Request) -> x509.Certificate | None:
    der = peer_der(request)
    return x509.load_der_x509_certificate(der) if der else None


def caller_from_der(der: bytes | None, auth: AuthServer) -> Identity:
    """The caller's identity, or NotLoggedIn with what to do (blocking: may read storage)."""
    if not der:
        raise NotLoggedIn('this request needs a certificate; log in with "ptsh login" first')
    cert = x509.load_der_x509_certificate(der)
    identity = identity_from_cert(cert)
    ca = auth.ctx.ca("host" if identity.is_host else "user").cert
    verify_issued_by(cert, [ca], auth.ctx.clock())
    # Locks, deleted users and roles taken away stop certificates at once, not when they expire.
    auth.access.check(identity)
    return identity


def caller(request: web.Request, auth: AuthServer) -> Identity:
    """The caller's identity, or NotLoggedIn with what to do."""
    return caller_from_der(peer_der(request), auth)


def remote_addr(request: web.Request) -> str:
    """The client's ``host:port`` as the socket sees it (what per-address limits count by)."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return f"{peer[0]}:{peer[1]}" if peer else ""
