"""The agent's upstream connection against a real PostgreSQL 15: TLS modes, every
authentication method, errors that name the fix, and cancelling a running query."""

from __future__ import annotations

import asyncio
import time

import pytest
from scramp import ScramMechanism

from common.errors import AccessDenied, BadParameter, ConnectionProblem, NotFound
from common.tls import server_context
from pteleport import pgwire
from pteleport.dbagent.upstream import UpstreamConnection, UpstreamTLS, connect_upstream, send_cancel
from tests.pgserver import PgServer, ThrowawayCA

PASSWORD = "s3cret-Pässword"
HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def client_ca(pg: PgServer) -> ThrowawayCA:
    ca = ThrowawayCA.create("upstream test client CA")
    pg.trust_client_ca(ca.cert_pem)
    return ca


@pytest.fixture(scope="module")
def roles(pg: PgServer) -> None:
    pg.create_role("up_cert", "cert")
    pg.create_role("up_scram", "scram", PASSWORD)
    pg.create_role("up_md5", "md5", PASSWORD)
    pg.create_role("up_password", "password", PASSWORD)
    pg.create_role("up_trust", "trust")


def tls_for(pg: PgServer, **kwargs) -> UpstreamTLS:
    return UpstreamTLS(ca_file=pg.ca_cert_file, **kwargs)


def _data_row(payload: bytes) -> list[str | None]:
    count = int.from_bytes(payload[:2], "big")
    pos, row = 2, []
    for _ in range(count):
        size = int.from_bytes(payload[pos : pos + 4], "big", signed=True)
        pos += 4
        if size < 0:
            row.append(None)
        else:
            row.append(payload[pos : pos + size].decode())
            pos += size
    return row


async def read_until_ready(conn: UpstreamConnection) -> tuple[list[list[str | None]], pgwire.ServerError | None]:
    frames = pgwire.FrameReader()
    rows: list[list[str | None]] = []
    error = None
    while True:
        data = await conn.reader.read(65536)
        assert data, "the server closed the connection"
        for kind, payload in frames.feed(data):
            if kind == b"D":
                rows.append(_data_row(payload))
            elif kind == pgwire.ERROR_RESPONSE:
                error = pgwire.parse_server_error(payload)
            elif kind == pgwire.READY_FOR_QUERY:
                return rows, error


async def query(conn: UpstreamConnection, sql: str) -> list[list[str | None]]:
    conn.writer.write(pgwire.Query(sql).encode())
    await conn.writer.drain()
    rows, error = await read_until_ready(conn)
    assert error is None, error
    return rows


async def login_and_ask(pg: PgServer, user: str, tls: UpstreamTLS, password: str | None = None):
    conn = await connect_upstream(HOST, pg.port, user, "postgres", tls, password=password, timeout=5)
    try:
        rows = await query(
            conn, "select current_user, ssl, pg_backend_pid() from pg_stat_ssl where pid = pg_backend_pid()"
        )
        return conn, rows[0]
    finally:
        conn.close()
        await conn.wait_closed()


def test_client_certificate_authentication(pg, roles, client_ca):
    cert, key = client_ca.issue("up_cert")
    tls = tls_for(pg, client_cert_pem=cert, client_key_pem=key)
    conn, (user, ssl_on, pid) = asyncio.run(login_and_ask(pg, "up_cert", tls))
    assert (user, ssl_on) == ("up_cert", "t")
    assert int(pid) == conn.backend_pid
    assert len(conn.backend_secret) == 4
    assert conn.auth_method == "none"
    assert conn.parameters["server_version"].startswith("15")
    assert conn.parameters["client_encoding"] == "UTF8"


def test_scram_uses_channel_binding(pg, roles):
    conn, (user, ssl_on, _) = asyncio.run(login_and_ask(pg, "up_scram", tls_for(pg), PASSWORD))
    assert (user, ssl_on) == ("up_scram", "t")
    assert conn.auth_method == "SCRAM-SHA-256-PLUS"


@pytest.mark.parametrize(("user", "method"), [("up_md5", "md5"), ("up_password", "password")])
def test_md5_and_cleartext_password_over_tls(pg, roles, user, method):
    conn, (who, ssl_on, _) = asyncio.run(login_and_ask(pg, user, tls_for(pg), PASSWORD))
    assert (who, ssl_on, conn.auth_method) == (user, "t", method)


def test_trust_and_startup_parameters_reach_the_server(pg, roles):
    async def run():
        params = {"application_name": "pteleport-test", "options": "-c search_path=pg_catalog", "user": "x"}
        conn = await connect_upstream(HOST, pg.port, "up_trust", "postgres", tls_for(pg), startup_params=params)
        try:
            return await query(
                conn, "select current_user, current_setting('application_name'), current_setting('search_path')"
            )
        finally:
            conn.close()

    assert asyncio.run(run()) == [["up_trust", "pteleport-test", "pg_catalog"]]


def test_wrong_password_is_access_denied_naming_the_user(pg, roles):
    with pytest.raises(AccessDenied) as err:
        asyncio.run(login_and_ask(pg, "up_scram", tls_for(pg), "wrong"))
    assert '"up_scram"' in err.value.message
    assert "password authentication failed" in err.value.message
    assert "28P01" in err.value.message


def test_missing_password_is_access_denied(pg, roles):
    with pytest.raises(AccessDenied, match='asks for a password for user "up_md5"'):
        asyncio.run(login_and_ask(pg, "up_md5", tls_for(pg)))


def test_user_without_a_matching_hba_rule_is_access_denied(pg):
    with pytest.raises(AccessDenied, match=r"pg_hba\.conf rejects connection"):
        asyncio.run(login_and_ask(pg, "postgres", tls_for(pg)))


def test_unknown_database_is_not_found(pg, roles):
    async def run():
        await connect_upstream(HOST, pg.port, "up_trust", "no_such_db", tls_for(pg))

    with pytest.raises(NotFound, match='no database "no_such_db"'):
        asyncio.run(run())


def test_untrusted_client_certificate_is_access_denied(pg, roles):
    stranger = ThrowawayCA.create("not trusted by the database")
    cert, key = stranger.issue("up_cert")
    # Usually the TLS alert arrives (AccessDenied); when the connection reset wins the race
    # the alert is lost and the message still points at the certificate.
    with pytest.raises((AccessDenied, ConnectionProblem), match=r"refused the database service.s client certificate"):
        asyncio.run(login_and_ask(pg, "up_cert", tls_for(pg, client_cert_pem=cert, client_key_pem=key)))


def test_closed_port_names_host_and_port(pg):
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectionProblem) as err:
        asyncio.run(connect_upstream(HOST, port, "u", "d", UpstreamTLS(), timeout=2))
    assert f"could not reach {HOST}:{port}" in err.value.message
    assert "firewall" in err.value.message


def test_hostname_mismatch_fails_verify_full_but_passes_verify_ca(pg, roles):
    with pytest.raises(ConnectionProblem) as err:
        asyncio.run(login_and_ask(pg, "up_trust", tls_for(pg, server_name="db.example.com")))
    assert "not valid for db.example.com" in err.value.message
    assert "127.0.0.1" in err.value.message  # what the certificate does cover
    tls = tls_for(pg, mode="verify-ca", server_name="db.example.com")
    _, (user, _, _) = asyncio.run(login_and_ask(pg, "up_trust", tls))
    assert user == "up_trust"


def test_server_name_localhost_matches_the_dns_san(pg, roles):
    _, (user, _, _) = asyncio.run(login_and_ask(pg, "up_trust", tls_for(pg, server_name="localhost")))
    assert user == "up_trust"


def test_unknown_server_ca_fails_verification(pg, roles, tmp_path):
    other = tmp_path / "other-ca.pem"
    other.write_bytes(ThrowawayCA.create("some other CA").cert_pem)
    with pytest.raises(ConnectionProblem, match="could not be verified"):
        asyncio.run(login_and_ask(pg, "up_trust", UpstreamTLS(ca_file=str(other))))
    _, (user, _, _) = asyncio.run(login_and_ask(pg, "up_trust", UpstreamTLS(mode="insecure")))
    assert user == "up_trust"


def test_certificate_with_only_a_common_name_is_explained(pg, roles):
    ca = ThrowawayCA.create("legacy CA")
    cert, key = ca.issue("legacy.example.com", sans=None, server=True)
    pg.set_server_cert(cert, key, ca.cert_pem)
    try:
        with pytest.raises(ConnectionProblem) as err:
            asyncio.run(login_and_ask(pg, "up_trust", tls_for(pg, server_name="legacy.example.com")))
        assert "legacy Common Name" in err.value.message
        assert "rotate" in err.value.message
    finally:
        pg.restore_server_cert()


def test_server_without_tls_is_refused():
    async def run():
        async def answer_no(reader, writer):
            await reader.readexactly(8)
            writer.write(b"N")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer_no, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            await connect_upstream(HOST, port, "u", "d", UpstreamTLS(mode="insecure"), password="p", timeout=2)

    with pytest.raises(ConnectionProblem, match="does not accept TLS"):
        asyncio.run(run())


def test_silent_server_times_out_with_a_clear_message():
    async def run():
        async def say_nothing(reader, writer):
            await reader.read()

        server = await asyncio.start_server(say_nothing, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            await connect_upstream(HOST, port, "u", "d", UpstreamTLS(mode="insecure"), timeout=0.3)

    start = time.monotonic()
    with pytest.raises(ConnectionProblem, match="stopped answering during the TLS negotiation"):
        asyncio.run(run())
    assert time.monotonic() - start < 2


def test_bad_tls_settings_are_bad_parameters(tmp_path):
    with pytest.raises(BadParameter, match="verify-full"):
        UpstreamTLS(mode="require")
    with pytest.raises(BadParameter, match="give both"):
        UpstreamTLS(client_cert_pem=b"x")
    with pytest.raises(BadParameter, match="cannot be read"):
        asyncio.run(connect_upstream(HOST, 1, "u", "d", UpstreamTLS(ca_file=str(tmp_path / "missing.pem"))))


def test_send_cancel_stops_a_running_query(pg, roles):
    async def run():
        tls = tls_for(pg)
        conn = await connect_upstream(HOST, pg.port, "up_scram", "postgres", tls, password=PASSWORD)
        try:
            conn.writer.write(pgwire.Query("select pg_sleep(30)").encode())
            await conn.writer.drain()
            sql = f"select 1 from pg_stat_activity where pid = {conn.backend_pid} and state = 'active'"
            for _ in range(100):
                if await asyncio.to_thread(pg.execute, sql):
                    break
                await asyncio.sleep(0.02)
            start = time.monotonic()
            await send_cancel(HOST, pg.port, tls, conn.backend_pid, conn.backend_secret)
            _, error = await asyncio.wait_for(read_until_ready(conn), 5)
            return error, time.monotonic() - start
        finally:
            conn.close()

    error, elapsed = asyncio.run(run())
    assert error is not None and error.code == "57014"
    assert elapsed < 2


# ----- a scripted server, for what a real PostgreSQL 15 does not do -------------------


async def _read_client_message(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(5)
    return await reader.readexactly(int.from_bytes(header[1:], "big") - 4)


def _initial_response_data(payload: bytes) -> tuple[str, bytes]:
    mechanism, _, rest = payload.partition(b"\x00")
    return mechanism.decode(), rest[4:]


async def run_against_script(script, **kwargs) -> UpstreamConnection:
    """Serve one connection: SSLRequest, TLS, StartupMessage, then ``script(reader, writer)``."""
    ca = ThrowawayCA.create("scripted server CA")
    cert, key = ca.issue("localhost", ["127.0.0.1"], server=True)
    server_ctx = server_context(cert, key, client_auth="none")

    async def handle(reader, writer):
        try:
            await reader.readexactly(8)
            writer.write(b"S")
            await writer.drain()
            await writer.start_tls(server_ctx)
            first = await reader.readexactly(8)
            await reader.readexactly(pgwire.startup_packet_length(first) - 8)
            await script(reader, writer)
            await writer.drain()
            await reader.read()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        conn = await connect_upstream(HOST, port, "scripted", "db", UpstreamTLS(mode="insecure"), timeout=5, **kwargs)
        conn.close()
        return conn


def _scram_server(writer_mechanisms: list[str]):
    mechanism = ScramMechanism("SCRAM-SHA-256")
    auth_info = mechanism.make_auth_info(PASSWORD)
    return mechanism.make_server(lambda _user: auth_info), writer_mechanisms


def test_plain_scram_when_the_server_offers_no_channel_binding():
    seen = {}

    async def script(reader, writer):
        scram, mechanisms = _scram_server(["SCRAM-SHA-256"])
        writer.write(pgwire.encode_message(pgwire.NEGOTIATE_PROTOCOL_VERSION, b"\x00\x00\x00\x00\x00\x00\x00\x00"))
        writer.write(pgwire.authentication_sasl(mechanisms))
        mechanism, first = _initial_response_data(await _read_client_message(reader))
        seen["mechanism"], seen["gs2"] = mechanism, first[:3]
        scram.set_client_first(first.decode())
        writer.write(pgwire.authentication(pgwire.AUTH_SASL_CONTINUE, scram.get_server_first().encode()))
        scram.set_client_final((await _read_client_message(reader)).decode())
        writer.write(pgwire.authentication(pgwire.AUTH_SASL_FINAL, scram.get_server_final().encode()))
        writer.write(pgwire.authentication_ok() + pgwire.notice_response("welcome"))
        writer.write(pgwire.parameter_status("server_version", "16.0") + pgwire.backend_key_data(7, b"k" * 32))
        writer.write(pgwire.ready_for_query())

    conn = asyncio.run(run_against_script(script, password=PASSWORD))
    assert conn.auth_method == "SCRAM-SHA-256"
    assert seen == {"mechanism": "SCRAM-SHA-256", "gs2": b"y,,"}  # "I could bind, you did not offer"
    assert (conn.backend_pid, conn.backend_secret) == (7, b"k" * 32)  # protocol 3.2 style key
    assert conn.parameters == {"server_version": "16.0"}


def test_server_that_skips_the_scram_proof_is_refused():
    async def script(reader, writer):
        scram, mechanisms = _scram_server(["SCRAM-SHA-256"])
        writer.write(pgwire.authentication_sasl(mechanisms))
        scram.set_client_first(_initial_response_data(await _read_client_message(reader))[1].decode())
        writer.write(pgwire.authentication(pgwire.AUTH_SASL_CONTINUE, scram.get_server_first().encode()))
        await _read_client_message(reader)
        writer.write(pgwire.authentication_ok() + pgwire.ready_for_query())

    with pytest.raises(ConnectionProblem, match="without proving it knows the password"):
        asyncio.run(run_against_script(script, password=PASSWORD))


def test_server_with_a_wrong_scram_signature_is_refused():
    async def script(reader, writer):
        scram, mechanisms = _scram_server(["SCRAM-SHA-256"])
        writer.write(pgwire.authentication_sasl(mechanisms))
        scram.set_client_first(_initial_response_data(await _read_client_message(reader))[1].decode())
        writer.write(pgwire.authentication(pgwire.AUTH_SASL_CONTINUE, scram.get_server_first().encode()))
        await _read_client_message(reader)
        writer.write(pgwire.authentication(pgwire.AUTH_SASL_FINAL, b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="))

    with pytest.raises(ConnectionProblem, match="failed the SCRAM exchange"):
        asyncio.run(run_against_script(script, password=PASSWORD))


def test_unsupported_authentication_method_is_access_denied():
    async def script(reader, writer):
        writer.write(pgwire.authentication(pgwire.AUTH_GSS))

    with pytest.raises(AccessDenied, match="GSSAPI"):
        asyncio.run(run_against_script(script, password=PASSWORD))


def test_garbage_from_the_server_is_a_connection_problem():
    async def script(reader, writer):
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    with pytest.raises(ConnectionProblem, match="check that this address is a PostgreSQL server"):
        asyncio.run(run_against_script(script))
