"""What a local tunnel says and hears before a session starts, without asyncio.

Shared by the asyncio tunnel (``ptsh.tunnel``) and by the first session of
``ptsh db connect`` (``ptsh.firstsession``), which opens and relays before asyncio is ever
imported: the startup packets, the ErrorResponse a refusal becomes, and the sentences for a
proxy that cannot be reached, refuses the TLS handshake, or closes without an answer.
"""

from __future__ import annotations

import os
import ssl
import struct
from datetime import timedelta

from common.addresses import split_host_port
from common.errors import BadParameter, ConnectionProblem, NotLoggedIn, PteleportError, from_sqlstate, sqlstate_for
from common.tlsctx import describe_ssl_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
PROTOCOL_3_0 = 196608
MAX_STARTUP = 10000
RENEW_BEFORE = timedelta(minutes=2)
GREETING_TIMEOUT = 30.0  # seconds for each message of the server's answer to a startup message
DIAL_TIMEOUT = 20.0  # seconds to connect to the proxy
HANDSHAKE_TIMEOUT = 15.0  # seconds for the TLS handshake with it
TERMINATE = b"X\x00\x00\x00\x04"

NOT_POSTGRES = (
    "protocol violation: the client did not send a PostgreSQL startup message; this is a "
    "local PostgreSQL tunnel, connect with a PostgreSQL client and sslmode=disable"
)
TOO_MANY_REQUESTS = (
    "protocol violation: more than two encryption requests before the startup message; "
    "connect with sslmode=disable (the tunnel encrypts the way to the proxy itself)"
)
NO_STARTUP = "protocol violation: no PostgreSQL startup message within 60 seconds; the tunnel closed the connection"


def split_proxy_addr(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT``) as a host and a port (``common.addresses``), or the sentence."""
    try:
        return split_host_port(addr)
    except BadParameter:
        raise BadParameter(f'the proxy address "{addr}" has no port') from None


def startup_packet(params: dict[str, str]) -> bytes:
    """A protocol 3.0 StartupMessage with these parameters (user, database, ...)."""
    body = struct.pack("!i", PROTOCOL_3_0)
    for key, value in params.items():
        body += key.encode() + b"\x00" + value.encode() + b"\x00"
    body += b"\x00"
    return struct.pack("!i", len(body) + 4) + body


def startup_params(packet: bytes) -> dict[str, str] | None:
    """The parameters of a StartupMessage (None for anything else: a CancelRequest, say)."""
    if len(packet) < 9 or struct.unpack_from("!i", packet, 4)[0] != PROTOCOL_3_0:
        return None
    parts = packet[8:].split(b"\x00")
    pairs = [p.decode(errors="replace") for p in parts[:-2]] if len(parts) >= 2 else []
    return dict(zip(pairs[0::2], pairs[1::2], strict=False))


def is_cancel(packet: bytes) -> bool:
    return len(packet) >= 8 and struct.unpack_from("!i", packet, 4)[0] == CANCEL_REQUEST


def error_fields(payload: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in payload.split(b"\x00"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return fields


def greeting_error(payload: bytes) -> PteleportError | None:
    """What an ErrorResponse to the startup message means: our refusal, or None for PostgreSQL's own.

    Only the server names its routine (field R); pteleport's refusals never do. PostgreSQL's
    own refusals (no such database, pg_hba.conf) are left to psql, which reports them as it
    would connected directly, except a server starting up or shutting down (08xxx, 57Pxx),
    which is "cannot reach".
    """
    fields = error_fields(payload)
    code = fields.get("C", "")
    if "R" in fields and not code.startswith(("08", "57P")):
        return None
    return from_sqlstate(code, fields.get("M", "the database refused the connection"))


class Greeting:
    """The server's answer to a StartupMessage, read message by message up to ReadyForQuery.

    Both tunnels (blocking and asyncio) read a 5-byte head, then ``payload_length(head)``
    bytes, and hand both to ``take``, until it answers True (the session is open; ``data``
    holds the answer to hand on) or False (PostgreSQL's own refusal: no session, psql is to
    connect and report it). Our refusals are raised, with their kind.
    """

    def __init__(self, trouble: ProxyTrouble) -> None:
        self.trouble = trouble
        self.data = bytearray()

    def payload_length(self, head: bytes) -> int:
        length = struct.unpack_from("!i", head, 1)[0]
        if length < 4 or length > 1 << 24:
            raise self.trouble.not_postgres()
        return length - 4

    def take(self, head: bytes, payload: bytes) -> bool | None:
        kind = head[:1]
        if kind == b"E":
            err = greeting_error(payload)
            if err is None:
                return False
            raise err
        self.data += head + payload
        return True if kind == b"Z" else None


def startup_rest(head: bytes, requests: int) -> int | None:
    """For the first 8 bytes of a client's packet: how many more to read, or None for an
    encryption request (answer it N; ``requests`` of them came before). BadParameter for
    anything that is not PostgreSQL, or a third encryption request."""
    length, code = struct.unpack("!ii", head)
    if length < 8 or length > MAX_STARTUP:
        raise BadParameter(NOT_POSTGRES)
    if length == 8 and code in (SSL_REQUEST, GSSENC_REQUEST):
        if requests >= 2:
            raise BadParameter(TOO_MANY_REQUESTS)
        return None
    return length - 8


def refusal(err: PteleportError) -> bytes:
    """A PostgreSQL ErrorResponse (FATAL) that carries the error's sentence and SQLSTATE."""
    message = err.message.replace("\x00", " ")
    fields = b"SFATAL\x00VFATAL\x00C" + sqlstate_for(err).encode() + b"\x00M" + message.encode() + b"\x00\x00"
    return b"E" + struct.pack("!i", len(fields) + 4) + fields


class ProxyTrouble:
    """The sentences for what can go wrong between the tunnel and the proxy at ``addr``.

    ``relogin`` says what to do when the cluster refuses the certificate; it may be a
    function, called only then (its words come from the profile code, which a session that
    works never needs to import).
    """

    def __init__(self, addr: str, relogin: str | Callable[[], str]) -> None:
        self.addr = addr
        self._relogin = relogin

    @property
    def relogin(self) -> str:
        return self._relogin if isinstance(self._relogin, str) else self._relogin()

    def unreachable(self, reason: str) -> ConnectionProblem:
        return ConnectionProblem(
            f"cannot reach the proxy at {self.addr} ({reason}); check that the proxy is running "
            "and that this machine can reach it"
        )

    def dial_failed(self, exc: OSError) -> PteleportError:
        """A connect that failed: a TLS refusal, a time-out, or the system's reason."""
        if isinstance(exc, ssl.SSLError):
            return self.tls_refusal(exc)
        if isinstance(exc, TimeoutError):
            return self.unreachable(f"no answer within {DIAL_TIMEOUT:.0f} seconds")
        return self.unreachable(os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__)

    def tls_refusal(self, exc: BaseException) -> PteleportError:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return NotLoggedIn(
                f"the proxy at {self.addr} presented a certificate this login does not trust "
                f"({exc.verify_message or exc}); it may be another cluster's: {self.relogin}"
            )
        text = describe_ssl_error(exc, relogin=self.relogin)
        if "refused your certificate" in text:
            return NotLoggedIn(text)
        return ConnectionProblem(f"cannot connect securely to the proxy at {self.addr}: {text}")

    def closed_without_answer(self, error: BaseException | None) -> PteleportError:
        if isinstance(error, ssl.SSLError):
            return self.tls_refusal(error)
        return ConnectionProblem(
            f"the proxy at {self.addr} closed the connection without answering; "
            "try again, and if it persists ask the cluster's administrator to check the proxy's log"
        )

    def not_postgres(self) -> ConnectionProblem:
        return ConnectionProblem(f"the proxy at {self.addr} answered with something that is not PostgreSQL")

    def no_greeting(self) -> ConnectionProblem:
        return ConnectionProblem(
            f"no answer from the database through the proxy at {self.addr} within {GREETING_TIMEOUT:.0f} s"
        )


def psql_startup(user: str, dbname: str, env: dict[str, str], terminal: bool) -> dict[str, str]:
    """The startup parameters psql (libpq) will send for ``connection_url(user, port, dbname)``.

    libpq adds ``application_name`` (``$PGAPPNAME``, else "psql"), ``options`` from
    ``$PGOPTIONS``, ``datestyle``/``timezone``/``geqo`` from ``$PGDATESTYLE``/``$PGTZ``/
    ``$PGGEQO``, and ``client_encoding`` from ``$PGCLIENTENCODING`` or, when psql runs on a
    terminal, from the locale. A guess that is wrong only costs the preflight's session
    being closed and psql getting its own.
    """
    params = {"user": user, "database": dbname}
    if env.get("PGOPTIONS"):
        params["options"] = env["PGOPTIONS"]
    params["application_name"] = env.get("PGAPPNAME") or "psql"
    encoding = env.get("PGCLIENTENCODING") or (_locale_encoding(env) if terminal else None)
    if encoding:
        params["client_encoding"] = encoding
    for var, name in (("PGDATESTYLE", "datestyle"), ("PGTZ", "timezone"), ("PGGEQO", "geqo")):
        if env.get(var) and env[var].lower() != "default":
            params[name] = env[var]
    return params


def _locale_encoding(env: dict[str, str]) -> str | None:
    """libpq's client_encoding=auto for the locale psql will run in (UTF-8 and C only)."""
    ctype = env.get("LC_ALL") or env.get("LC_CTYPE") or env.get("LANG") or "C"
    if ctype in ("C", "POSIX"):
        return "SQL_ASCII"
    codeset = ctype.partition(".")[2].partition("@")[0].replace("-", "").lower()
    return "UTF8" if codeset == "utf8" else None
