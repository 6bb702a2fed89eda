"""Server TLS contexts whose refused handshakes reach the client as a TLS alert.

When OpenSSL refuses a handshake (an expired client certificate, one from a foreign CA, a
tampered one) it writes the matching alert (certificate_expired, unknown_ca,
bad_certificate, decrypt_error, ...) into the outgoing memory BIO and raises. asyncio's
SSL protocol (``asyncio/sslproto.py``) and uvloop's compiled copy of it then call
``_on_handshake_complete(exc)`` -> ``_fatal_error`` -> ``transport._force_close``, which
closes the socket without writing that BIO: the client sees only EOF (psql: "SSL SYSCALL
error: EOF detected"), never the reason.

``AlertingContext.wrap_bio`` hands the loop an ``SSLObject`` whose ``do_handshake`` holds
such a refusal back once: it raises ``SSLWantReadError`` instead, which both loops answer
by writing the outgoing BIO (the alert) to the socket and waiting for input. The next call
(the client's next bytes) raises the held error, and EOF (the client closing after it
read the alert) ends the handshake as before; a client that does neither is closed by the
handshake timeout, as a client that stalls its handshake always was. Refusals that produced no alert (a plain
HTTP request on the TLS port) raise at once, as before. Only ``do_handshake`` changes, so
both loops keep their own SSL protocol and the connection after the handshake costs
exactly what it did.

Connections accepted on ``common.sockettransport`` (the proxy's public port) do not need
this: OpenSSL writes the alert to the socket itself before it raises. It
still serves what the loop's own TLS transport carries: the native listener on
``postgres_listen_addr`` (``loop.create_server``, then ``loop.start_tls``).
"""

from __future__ import annotations

import logging
import ssl

log = logging.getLogger("common.tls")


class _AlertFirst(ssl.SSLObject):
    """An SSLObject that lets the loop send a refusal's alert before it reports the refusal."""

    _outgoing: ssl.MemoryBIO | None = None
    _refusal: ssl.SSLError | None = None

    def do_handshake(self) -> None:
        if self._refusal is not None:
            refusal, self._refusal = self._refusal, None
            raise refusal
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            if self._outgoing is None or not self._outgoing.pending:
                raise
            log.debug("refused a TLS handshake, alert sent: %s", exc)
            self._refusal = exc.with_traceback(None)  # no frame of ours: no reference cycle
            raise ssl.SSLWantReadError("the refusal's alert is being sent") from None


class AlertingContext(ssl.SSLContext):
    """An ``ssl.SSLContext`` for servers on asyncio or uvloop: refused handshakes send their alert."""

    sslobject_class = _AlertFirst

    def wrap_bio(  # type: ignore[override]
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        obj = super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        if isinstance(obj, _AlertFirst):
            obj._outgoing = outgoing
        return obj
