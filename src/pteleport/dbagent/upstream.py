"""The database agent's own connection to the real PostgreSQL server.

``connect_upstream`` speaks the startup phase itself (libpq cannot hand over a TLS
session): SSLRequest, TLS with the configured verification, StartupMessage, then
whatever authentication the server asks for (none, cleartext password or IAM token,
MD5, SCRAM-SHA-256 with tls-server-end-point channel binding when offered), and reads
ParameterStatus and BackendKeyData up to the first ReadyForQuery. The streams it returns
sit right after that ReadyForQuery, ready to relay.

``send_cancel`` delivers a CancelRequest the same way, inside TLS.

Every failure is one of ``ConnectionProblem``, ``AccessDenied``, ``NotFound``,
``LimitExceeded`` or ``BadParameter`` with a message that says what to fix.

Before TLS the agent reads the one-byte answer to SSLRequest straight from the socket, so
bytes a man in the middle appends to it go into the TLS handshake (which then fails)
instead of being taken as the server's first encrypted messages (CVE-2021-23222).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import ssl
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509.oid import NameOID
from scramp import ScramClient, ScramException

from common.errors import (
    AccessDenied,
    BadParameter,
    ConnectionProblem,
    LimitExceeded,
    NotFound,
    PteleportError,
)
from common.sockettransport import handshake, open_socket, stream_pair
from common.tls import load_cert_chain
from pteleport import pgwire

TLS_MODES = ("verify-full", "verify-ca", "insecure")
_MAX_STARTUP_MESSAGE = 1024 * 1024
_SCRAM = "SCRAM-SHA-256"
_SCRAM_PLUS = "SCRAM-SHA-256-PLUS"
_HOSTNAME_MISMATCH = 62  # X509_V_ERR_HOSTNAME_MISMATCH
_IP_MISMATCH = 64  # X509_V_ERR_IP_ADDRESS_MISMATCH


@dataclass(frozen=True)
class UpstreamTLS:
    """How the agent secures its connection to the database.

    ``mode``: ``verify-full`` checks the chain and the name (``server_name`` or the host),
    ``verify-ca`` the chain only, ``insecure`` nothing. Without ``ca_file`` the system
    trust store is used. ``client_cert_pem``/``client_key_pem`` are presented when given.
    """

    mode: str = "verify-full"
    ca_file: str | None = None
    server_name: str | None = None
    client_cert_pem: bytes | None = field(default=None, repr=False)
    client_key_pem: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in TLS_MODES:
            raise BadParameter(f"tls mode {self.mode!r} is not one of {', '.join(TLS_MODES)}; pick one of them")
        if (self.client_cert_pem is None) != (self.client_key_pem is None):
            raise BadParameter("a client certificate needs its private key and the other way round; give both")


@dataclass
class UpstreamConnection:
    """An authenticated session; the streams are positioned after the first ReadyForQuery."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    parameters: dict[str, str]
    backend_pid: int
    backend_secret: bytes
    auth_method: str  # "none" (trust or client certificate), "password", "md5", "SCRAM-SHA-256(-PLUS)"

    def close(self) -> None:
        """Say Terminate (best effort) and close the connection."""
        transport = self.writer.transport
        if not transport.is_closing():
            with contextlib.suppress(Exception):
                self.writer.write(pgwire.Terminate().encode())
            self.writer.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 2.0)


# ----- TLS context ---------------------------------------------------------------------

_contexts: dict[tuple[UpstreamTLS, int], ssl.SSLContext] = {}


def make_ssl_context(tls: UpstreamTLS) -> ssl.SSLContext:
    """The client context for ``tls`` (cached; a changed CA file gives a new one)."""
    try:
        stamp = os.stat(tls.ca_file).st_mtime_ns if tls.ca_file else 0
    except OSError as exc:
        raise BadParameter(
            f"the database CA file {tls.ca_file} cannot be read ({exc.strerror}); fix tls.ca_cert_file"
        ) from exc
    key = (tls, stamp)
    ctx = _contexts.get(key)
    if ctx is None:
        ctx = _build_context(tls)
        if len(_contexts) >= 32:
            _contexts.clear()
        _contexts[key] = ctx
    return ctx


def _build_context(tls: UpstreamTLS) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["postgresql"])
    if tls.mode == "insecure":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        try:
            if tls.ca_file:
                ctx.load_verify_locations(cafile=tls.ca_file)
            else:
                ctx.load_default_certs()
        except (OSError, ssl.SSLError) as exc:
            raise BadParameter(
                f"the database CA file {tls.ca_file} holds no usable PEM certificate ({exc});"
                " point tls.ca_cert_file at the PEM bundle of the CA that signed the database's certificate"
            ) from exc
        ctx.check_hostname = tls.mode == "verify-full"
        ctx.hostname_checks_common_name = False
        ctx.verify_mode = ssl.CERT_REQUIRED
    if tls.client_cert_pem is not None and tls.client_key_pem is not None:
        try:
            load_cert_chain(ctx, tls.client_cert_pem, tls.client_key_pem)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise BadParameter(
                "the client certificate for the database is not valid PEM or does not match its key;"
                " issue a new one (pctl auth sign --format=db)"
            ) from exc
    return ctx


# ----- errors --------------------------------------------------------------------------


class FromServer(PteleportError):
    """Mixed into the errors made from the database's own ErrorResponse during startup.

    ``message`` is our sentence for the agent's log and the audit event (what to check);
    ``response`` is the server's message as it sent it, which the client gets unchanged, so
    it sees the SQLSTATE, message, detail and hint it would see connected directly.
    """

    response: bytes = b""


class ServerAccessDenied(FromServer, AccessDenied):
    pass


class ServerNotFound(FromServer, NotFound):
    pass


class ServerLimitExceeded(FromServer, LimitExceeded):
    pass


class ServerProblem(FromServer, ConnectionProblem):
    pass


def _with_response(err: PteleportError, response: bytes) -> PteleportError:
    kinds: dict[type, type[FromServer]] = {
        AccessDenied: ServerAccessDenied,
        NotFound: ServerNotFound,
        LimitExceeded: ServerLimitExceeded,
        ConnectionProblem: ServerProblem,
    }
    cls = kinds.get(type(err))
    if cls is None:
        return err
    made = cls(err.message, err.detail)
    made.response = response
    return made



class _Progress:
    """What the connection is doing, for the message when something goes wrong."""

    def __init__(self, host: str, port: int, client_cert: bool = False) -> None:
        self.where = f"{host}:{port}"
        self.stage = "connect"
        self.client_cert = client_cert
        self.heard_back = False  # has the server sent a message since the handshake?


def _unreachable(where: str, reason: str) -> ConnectionProblem:
    return ConnectionProblem(
        f"the database service could not reach {where}: {reason}; check that the database is running"
        " and that this host can reach it (security groups, firewall)"
    )


def _timed_out(progress: _Progress, timeout: float) -> ConnectionProblem:
    if progress.stage == "connect":
        return _unreachable(progress.where, f"no answer within {timeout:g}s")
    return ConnectionProblem(
        f"the database at {progress.where} stopped answering during {progress.stage} (waited {timeout:g}s);"
        " check the database's load and its server log"
    )


def _closed(progress: _Progress) -> ConnectionProblem:
    if progress.client_cert and progress.stage == "authentication" and not progress.heard_back:
        # A TLS 1.3 server checks the client certificate after the handshake; its alert can
        # be lost when the connection is reset, so say what most likely happened.
        return ConnectionProblem(
            f"the database at {progress.where} closed the connection right after the TLS handshake,"
            " most likely because it refused the database service's client certificate; make the"
            " database trust the CA that issued it (ssl_ca_file), or check the database server log"
        )
    return ConnectionProblem(
        f"the database at {progress.where} closed the connection during {progress.stage};"
        " check the database server log for the reason"
    )


def _startup_error(payload: bytes, user: str, database: str, where: str, authenticated: bool) -> PteleportError:
    try:
        err = pgwire.parse_server_error(payload)
    except BadParameter:
        return ConnectionProblem(f"the server at {where} sent a malformed error; check that it is PostgreSQL")
    quoted = f'"{err.message}" (SQLSTATE {err.code})'
    detail = "; ".join(part for part in (err.detail, err.hint) if part) or None
    if err.code.startswith("28") or (not authenticated and not err.code.startswith(("08", "53", "57"))):
        return AccessDenied(
            f'the database at {where} refused user "{user}": {quoted}; check that this database user'
            " exists and accepts the credentials the database service uses (password, IAM token or"
            " client certificate) in pg_hba.conf",
            detail,
        )
    if err.code == "3D000":
        return NotFound(f'the database at {where} has no database "{database}": {quoted}; use an existing name', detail)
    if err.code.startswith("53"):
        return LimitExceeded(f"the database at {where} is out of resources: {quoted}; try again later", detail)
    return ConnectionProblem(
        f'the database at {where} did not open a session for user "{user}": {quoted}; check the database server log',
        detail,
    )


def _cert_names(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """(SAN names, subject CNs) of ``cert``."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        sans += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        sans = []
    cns = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return sans, cns


def _name_matches(pattern: str, name: str) -> bool:
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, tail = name.partition(".")
        return bool(head) and tail == pattern[2:]
    return pattern == name


async def _verification_problem(
    exc: ssl.SSLCertVerificationError, host: str, port: int, tls: UpstreamTLS
) -> ConnectionProblem:
    where = f"{host}:{port}"
    name = tls.server_name or host
    if exc.verify_code not in (_HOSTNAME_MISMATCH, _IP_MISMATCH):
        return ConnectionProblem(
            f"the database certificate at {where} could not be verified ({exc.verify_message});"
            " set tls.ca_cert_file to the CA that signed it (for RDS, the region's RDS CA bundle)",
            str(exc),
        )
    cert = await _peek_certificate(host, port, tls)
    sans, cns = _cert_names(cert) if cert is not None else ([], [])
    if cert is not None and not sans and any(_name_matches(cn, name) for cn in cns):
        return ConnectionProblem(
            f"the database certificate at {where} relies on the legacy Common Name field (CN={cns[0]})"
            f" and has no Subject Alternative Name, so it is not valid for {name}; rotate it to a"
            " certificate with a SAN (for RDS, rotate the instance to a current RDS CA such as"
            " rds-ca-rsa2048-g1)",
            str(exc),
        )
    covered = ", ".join(sans) if sans else "no names"
    return ConnectionProblem(
        f"the database certificate at {where} is not valid for {name} (it covers {covered}); set"
        " tls.server_name to a name it covers, connect by such a name, or use tls mode verify-ca",
        str(exc),
    )


async def _peek_certificate(host: str, port: int, tls: UpstreamTLS) -> x509.Certificate | None:
    """Fetch the server certificate without verifying it, only to explain a failure."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(3.0):
            _, writer = await _open_tls(host, port, UpstreamTLS(mode="insecure"), _Progress(host, port))
            try:
                der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            finally:
                writer.close()
            return x509.load_der_x509_certificate(der)
    return None


# ----- connecting ----------------------------------------------------------------------


async def _open_socket(host: str, port: int, progress: _Progress) -> socket.socket:
    try:
        sock = await open_socket(host, port)
    except socket.gaierror as exc:
        raise _unreachable(progress.where, f"cannot resolve {host} ({exc.strerror})") from exc
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise _unreachable(progress.where, reason.lower() if reason else "connection failed") from exc
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    return sock


async def _open_tls(
    host: str, port: int, tls: UpstreamTLS, progress: _Progress
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    ctx = make_ssl_context(tls)
    sock = await _open_socket(host, port, progress)
    loop = asyncio.get_running_loop()
    try:
        progress.stage = "the TLS negotiation"
        await loop.sock_sendall(sock, pgwire.encode_ssl_request())
        answer = await loop.sock_recv(sock, 1)
    except OSError as exc:
        sock.close()
        raise _closed(progress) from exc
    except BaseException:
        sock.close()
        raise
    if answer != b"S":
        sock.close()
        if not answer:
            raise _closed(progress)
        raise ConnectionProblem(
            f"the database at {progress.where} does not accept TLS connections (it answered {answer!r} to"
            " SSLRequest); turn on TLS in the database server (ssl = on), pteleport never sends"
            " credentials in the clear"
        )
    progress.stage = "the TLS handshake"
    try:
        tls_sock = await handshake(sock, ctx, server_side=False, timeout=None, server_hostname=tls.server_name or host)
        return stream_pair(tls_sock)
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise await _verification_problem(exc, host, port, tls) from exc
    except ssl.SSLError as exc:
        sock.close()
        raise ConnectionProblem(
            f"the TLS handshake with the database at {progress.where} failed ({exc.reason or exc});"
            " check the database's TLS settings (ssl_min_protocol_version, certificate and key)",
            str(exc),
        ) from exc
    except (OSError, EOFError) as exc:
        sock.close()
        raise _closed(progress) from exc
    except BaseException:
        sock.close()
        raise


async def connect_upstream(
    host: str,
    port: int,
    user: str,
    database: str,
    tls: UpstreamTLS,
    password: str | None = None,
    startup_params: dict[str, str] | None = None,
    timeout: float = 15.0,
) -> UpstreamConnection:
    """Open an authenticated session as ``user`` on ``database``.

    ``startup_params`` (e.g. ``application_name``, ``options``) are sent too; ``user`` and
    ``database`` always come from the arguments.
    """
    params = dict(startup_params or {})
    params.update(user=user, database=database)
    progress = _Progress(host, port, client_cert=tls.client_cert_pem is not None)
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await _open_tls(host, port, tls, progress)
            try:
                return await _startup(reader, writer, user, database, password, params, progress)
            except BaseException:
                writer.close()
                raise
    except TimeoutError as exc:
        raise _timed_out(progress, timeout) from exc


async def _read_message(reader: asyncio.StreamReader, progress: _Progress) -> tuple[bytes, bytes]:
    header = await reader.readexactly(5)
    progress.heard_back = True
    length = int.from_bytes(header[1:], "big", signed=True)
    if not 4 <= length <= _MAX_STARTUP_MESSAGE:
        raise ConnectionProblem(
            f"the server at {progress.where} sent a malformed message during {progress.stage};"
            " check that this address is a PostgreSQL server"
        )
    return header[:1], await reader.readexactly(length - 4)


async def _startup(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    user: str,
    database: str,
    password: str | None,
    params: dict[str, str],
    progress: _Progress,
) -> UpstreamConnection:
    where = progress.where
    try:
        progress.stage = "authentication"
        writer.write(pgwire.encode_startup_message(params))
        auth = _Authenticator(user, password, where, writer.get_extra_info("ssl_object"))
        while True:
            kind, payload = await _read_message(reader, progress)
            if kind == pgwire.ERROR_RESPONSE:
                raise _with_response(
                    _startup_error(payload, user, database, where, authenticated=False),
                    pgwire.encode_message(kind, payload),
                )
            if kind in (pgwire.NOTICE_RESPONSE, pgwire.NEGOTIATE_PROTOCOL_VERSION):
                continue
            if kind != pgwire.AUTHENTICATION:
                raise _unexpected(kind, progress)
            reply = auth.step(*pgwire.parse_authentication(payload))
            if reply is None:
                break
            if reply:
                writer.write(reply)
                await writer.drain()
        progress.stage = "session start"
        parameters: dict[str, str] = {}
        pid, secret = 0, b""
        while True:
            kind, payload = await _read_message(reader, progress)
            if kind == pgwire.PARAMETER_STATUS:
                name, value = pgwire.parse_parameter_status(payload)
                parameters[name] = value
            elif kind == pgwire.BACKEND_KEY_DATA:
                pid, secret = pgwire.parse_backend_key_data(payload)
            elif kind == pgwire.READY_FOR_QUERY:
                break
            elif kind == pgwire.ERROR_RESPONSE:
                raise _with_response(
                    _startup_error(payload, user, database, where, authenticated=True),
                    pgwire.encode_message(kind, payload),
                )
            elif kind not in (pgwire.NOTICE_RESPONSE, pgwire.NEGOTIATE_PROTOCOL_VERSION):
                raise _unexpected(kind, progress)
    except asyncio.IncompleteReadError as exc:
        raise _closed(progress) from exc
    except ssl.SSLError as exc:
        raise _tls_failure(exc, user, progress) from exc
    except (ConnectionError, OSError) as exc:
        raise _closed(progress) from exc
    except BadParameter as exc:
        raise ConnectionProblem(
            f"the server at {where} sent a malformed message during {progress.stage} ({exc.message});"
            " check that this address is a PostgreSQL server"
        ) from exc
    return UpstreamConnection(reader, writer, parameters, pid, secret, auth.method)


def _unexpected(kind: bytes, progress: _Progress) -> ConnectionProblem:
    return ConnectionProblem(
        f"the server at {progress.where} sent an unexpected message {kind!r} during {progress.stage};"
        " check that this address is a PostgreSQL server"
    )


def _tls_failure(exc: ssl.SSLError, user: str, progress: _Progress) -> PteleportError:
    reason = exc.reason or str(exc)
    if "ALERT" in reason.upper() and "CLOSE_NOTIFY" not in reason.upper():
        return AccessDenied(
            f'the database at {progress.where} refused the database service\'s client certificate for user "{user}"'
            f" ({reason}); make the database trust the CA that issued it (ssl_ca_file) and check it has not expired",
            str(exc),
        )
    return ConnectionProblem(
        f"the TLS connection to the database at {progress.where} failed during {progress.stage} ({reason});"
        " check the database server log",
        str(exc),
    )


class _Authenticator:
    """Answers the server's authentication requests, one ``step`` per request."""

    def __init__(self, user: str, password: str | None, where: str, ssl_object: ssl.SSLObject | None) -> None:
        self.user = user
        self.password = password
        self.where = where
        self.ssl_object = ssl_object
        self.method = "none"
        self._scram: ScramClient | None = None
        self._scram_done = False

    def step(self, code: int, data: bytes) -> bytes | None:
        """The reply to send (``b""`` for none), or ``None`` once authentication succeeded."""
        if code == pgwire.AUTH_OK:
            if self._scram is not None and not self._scram_done:
                raise ConnectionProblem(
                    f"the server at {self.where} ended SCRAM authentication without proving it knows the"
                    " password; it may not be the real database, check the network path"
                )
            return None
        if code == pgwire.AUTH_CLEARTEXT_PASSWORD:
            self.method = "password"
            return pgwire.encode_password_message(self._need_password())
        if code == pgwire.AUTH_MD5_PASSWORD:
            if len(data) != 4:
                raise ConnectionProblem(f"the server at {self.where} sent a malformed MD5 salt")
            self.method = "md5"
            return pgwire.encode_password_message(_md5_response(self.user, self._need_password(), data))
        if code == pgwire.AUTH_SASL:
            return self._sasl_start(pgwire.parse_sasl_mechanisms(data))
        if code in (pgwire.AUTH_SASL_CONTINUE, pgwire.AUTH_SASL_FINAL):
            return self._sasl_next(code, data)
        names = {pgwire.AUTH_KERBEROS_V5: "Kerberos", pgwire.AUTH_GSS: "GSSAPI", pgwire.AUTH_SSPI: "SSPI"}
        raise AccessDenied(
            f'the database at {self.where} asks user "{self.user}" to authenticate with'
            f" {names.get(code, f'method {code}')}, which the database service does not support; use cert,"
            " scram-sha-256, md5 or password (IAM) authentication for this user in pg_hba.conf"
        )

    def _need_password(self) -> str:
        if self.password is None:
            raise AccessDenied(
                f'the database at {self.where} asks for a password for user "{self.user}" but the database'
                " service has none; configure a password or IAM authentication for this database, or let"
                " the user log in with a client certificate (pg_hba.conf method cert)"
            )
        return self.password

    def _sasl_start(self, mechanisms: list[str]) -> bytes:
        password = self._need_password()
        offered = [m for m in mechanisms if m in (_SCRAM, _SCRAM_PLUS)]
        if not offered:
            raise AccessDenied(
                f"the database at {self.where} offers only SASL mechanisms {', '.join(mechanisms)};"
                " the database service supports SCRAM-SHA-256, so configure that for this user"
            )
        client = None
        if self.ssl_object is not None:
            # With binding data scramp picks -PLUS when offered, else sends "y" so that a
            # server which does support binding detects a stripped mechanism list.
            with contextlib.suppress(ScramException):
                client = ScramClient(
                    offered, self.user, password, channel_binding=("tls-server-end-point", self.ssl_object)
                )
        if client is None:
            plain = [m for m in offered if m == _SCRAM]
            if not plain:
                raise ConnectionProblem(
                    f"the database at {self.where} requires SCRAM channel binding, which its certificate"
                    " does not allow; use an RSA or ECDSA server certificate"
                )
            try:
                client = ScramClient(plain, self.user, password)
            except ScramException as exc:
                raise AccessDenied(
                    f'the password for user "{self.user}" cannot be used with SCRAM ({exc}); set a new password'
                ) from exc
        self._scram = client
        self.method = client.mechanism_name
        return pgwire.encode_sasl_initial_response(client.mechanism_name, client.get_client_first().encode())

    def _sasl_next(self, code: int, data: bytes) -> bytes:
        if self._scram is None or self._scram_done:
            raise ConnectionProblem(f"the server at {self.where} sent a SASL message out of order")
        try:
            if code == pgwire.AUTH_SASL_CONTINUE:
                self._scram.set_server_first(data.decode("utf-8"))
                return pgwire.encode_sasl_response(self._scram.get_client_final().encode())
            self._scram.set_server_final(data.decode("utf-8"))
        except (ScramException, UnicodeDecodeError) as exc:
            raise ConnectionProblem(
                f"the server at {self.where} failed the SCRAM exchange ({exc}); it may not be the real"
                " database, check the network path and the server's certificate",
                str(exc),
            ) from exc
        self._scram_done = True
        return b""


def _md5_response(user: str, password: str, salt: bytes) -> str:
    inner = hashlib.md5(password.encode() + user.encode(), usedforsecurity=False).hexdigest()
    return "md5" + hashlib.md5(inner.encode() + salt, usedforsecurity=False).hexdigest()


# ----- cancel --------------------------------------------------------------------------


async def send_cancel(host: str, port: int, tls: UpstreamTLS, pid: int, secret: bytes, timeout: float = 10.0) -> None:
    """Ask the database to cancel the query running in backend ``pid`` (inside TLS)."""
    progress = _Progress(host, port)
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await _open_tls(host, port, tls, progress)
            try:
                progress.stage = "the cancel request"
                writer.write(pgwire.encode_cancel_request(pid, secret))
                await writer.drain()
                with contextlib.suppress(ssl.SSLError, OSError):
                    await reader.read()  # the server closes the connection when done
            except OSError as exc:
                raise _closed(progress) from exc
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.wait_closed(), 1.0)
    except TimeoutError as exc:
        raise _timed_out(progress, timeout) from exc
