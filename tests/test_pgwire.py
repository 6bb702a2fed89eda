"""pgwire: round trips, partial feeds, malformed and oversized input, audit parameters,
and byte sequences as psql and psycopg send them."""

from __future__ import annotations

import random
import struct
import time

import pytest

from common.errors import BadParameter
from pteleport import pgwire
from pteleport.pgwire import (
    Bind,
    CancelRequest,
    Close,
    Execute,
    FrameReader,
    FunctionCall,
    GSSENCRequest,
    Parse,
    Query,
    SSLRequest,
    StartupMessage,
    Terminate,
)

# ----- startup packets -----------------------------------------------------------------

# What psql 15 sends first: an SSLRequest, then (inside TLS) this StartupMessage.
PSQL_SSL_REQUEST = bytes.fromhex("0000000804d2162f")
PSQL_STARTUP = (
    b"\x00\x00\x00\x4c\x00\x03\x00\x00"
    b"user\x00alice\x00database\x00app\x00application_name\x00psql\x00"
    b"client_encoding\x00UTF8\x00\x00"
)


def test_constants():
    assert pgwire.SSL_REQUEST_CODE == 80877103
    assert pgwire.CANCEL_REQUEST_CODE == 80877102
    assert pgwire.GSSENC_REQUEST_CODE == 80877104
    assert pgwire.PROTOCOL_3_0 == 196608
    assert pgwire.PROTOCOL_3_2 == 196610


def test_psql_ssl_request_and_startup_message():
    assert pgwire.startup_packet_length(PSQL_SSL_REQUEST) == 8
    assert pgwire.parse_startup_packet(PSQL_SSL_REQUEST) == SSLRequest()
    assert pgwire.encode_ssl_request() == PSQL_SSL_REQUEST
    assert pgwire.startup_packet_length(PSQL_STARTUP[:8]) == len(PSQL_STARTUP)
    msg = pgwire.parse_startup_packet(PSQL_STARTUP)
    assert isinstance(msg, StartupMessage)
    assert msg.protocol == pgwire.PROTOCOL_3_0 and msg.version == (3, 0)
    assert msg.params == {"user": "alice", "database": "app", "application_name": "psql", "client_encoding": "UTF8"}
    assert (msg.user, msg.database) == ("alice", "app")
    assert msg.encode() == PSQL_STARTUP


def test_startup_message_round_trip_and_protocol_3_2():
    params = {"user": "bob", "options": "-c search_path=app", "application_name": "Ünïcode"}
    packet = pgwire.encode_startup_message(params, pgwire.PROTOCOL_3_2)
    msg = pgwire.parse_startup_packet(packet)
    assert msg == StartupMessage(pgwire.PROTOCOL_3_2, params)
    assert msg.database == "bob"  # defaults to the user


def test_gssenc_and_cancel_requests():
    gss = pgwire.encode_gssenc_request()
    assert pgwire.parse_startup_packet(gss) == GSSENCRequest()
    assert GSSENCRequest().encode() == gss
    cancel = pgwire.encode_cancel_request(4242, b"\x01\x02\x03\x04")
    assert cancel == struct.pack("!iii", 16, 80877102, 4242) + b"\x01\x02\x03\x04"
    assert pgwire.parse_startup_packet(cancel) == CancelRequest(4242, b"\x01\x02\x03\x04")
    long_key = bytes(range(32))  # protocol 3.2 keys are longer
    assert pgwire.parse_startup_packet(CancelRequest(7, long_key).encode()) == CancelRequest(7, long_key)


@pytest.mark.parametrize(
    "packet",
    [
        b"\x00\x00",  # too short to hold a length
        struct.pack("!ii", 4, 196608),  # below the minimum
        struct.pack("!ii", -8, 196608),  # negative
        struct.pack("!ii", 10001, 196608),  # above PostgreSQL's limit
        struct.pack("!ii", 0x16030100, 0),  # a TLS ClientHello read as a length
        struct.pack("!ii", 12, 196608),  # declares more than given
        struct.pack("!ii", 8, 131072),  # protocol 2.0
        struct.pack("!ii", 12, 80877103) + b"\x00" * 4,  # SSLRequest with a body
        struct.pack("!iii", 15, 80877102, 1) + b"abc",  # 3-byte cancel key
        struct.pack("!iii", 12 + 257, 80877102, 1) + b"k" * 257,  # 257-byte cancel key
        struct.pack("!ii", 13, 196608) + b"user\x00",  # value missing
        struct.pack("!ii", 18, 196608) + b"user\x00bob\x00\x00xx",  # trailing bytes
        struct.pack("!ii", 17, 196608) + b"user\x00b\xffb\x00\x00",  # not UTF-8
    ],
)
def test_garbage_startup_packets_are_bad_parameters(packet):
    with pytest.raises(BadParameter):
        pgwire.parse_startup_packet(packet)


def test_encoders_refuse_what_cannot_be_sent():
    with pytest.raises(BadParameter):
        pgwire.encode_startup_message({"user": "a\x00b"})
    with pytest.raises(BadParameter):
        pgwire.encode_startup_message({"": "x"})
    with pytest.raises(BadParameter):
        pgwire.encode_startup_message({"options": "x" * 10000})
    with pytest.raises(BadParameter):
        pgwire.encode_cancel_request(1, b"abc")


# ----- framing -------------------------------------------------------------------------

# Captured from psycopg 3.3 (libpq 18) connecting with application_name=psql and running
# `cur.execute("select %s::int, %s::text", (42, "secret"))` in autocommit mode:
# the StartupMessage, then Parse, Bind (value 1 binary int2, value 2 text),
# Describe portal, Execute, Sync.
PSYCOPG_STARTUP = b"\x00\x00\x007\x00\x03\x00\x00user\x00alice\x00database\x00app\x00application_name\x00psql\x00\x00"
PSYCOPG_EXTENDED = (
    b"P\x00\x00\x00(\x00select $1::int, $2::text\x00\x00\x02\x00\x00\x00\x15\x00\x00\x00\x00"
    b'B\x00\x00\x00"\x00\x00\x00\x02\x00\x01\x00\x00\x00\x02\x00\x00\x00\x02\x00*\x00\x00\x00\x06secret\x00\x01\x00\x00'
    b"D\x00\x00\x00\x06P\x00"
    b"E\x00\x00\x00\t\x00\x00\x00\x00\x00"
    b"S\x00\x00\x00\x04"
)


def test_psycopg_startup_message():
    msg = pgwire.parse_startup_packet(PSYCOPG_STARTUP)
    assert msg == StartupMessage(pgwire.PROTOCOL_3_0, {"user": "alice", "database": "app", "application_name": "psql"})
    assert msg.encode() == PSYCOPG_STARTUP


def test_psycopg_extended_query_sequence():
    messages = FrameReader().feed(PSYCOPG_EXTENDED)
    assert [kind for kind, _ in messages] == [b"P", b"B", b"D", b"E", b"S"]
    parsed = [pgwire.parse_frontend_message(kind, payload) for kind, payload in messages]
    assert parsed[0] == Parse("", "select $1::int, $2::text", [21, 0])
    assert parsed[1] == Bind("", "", [1, 0], [b"\x00*", b"secret"], [0])
    assert parsed[2] is None  # Describe is relayed without inspection
    assert parsed[3] == Execute("", 0)
    assert parsed[4] is None
    assert pgwire.bind_parameters_for_audit(parsed[1]) == ["ACo=", "secret"]
    assert pgwire.bind_parameters_for_audit(parsed[1], parsed[0].param_oids) == ["42", "secret"]
    first_two = len(messages[0][1]) + len(messages[1][1]) + 10
    assert b"".join(m.encode() for m in (parsed[0], parsed[1])) == PSYCOPG_EXTENDED[:first_two]


def test_frames_split_at_every_byte_come_out_whole():
    stream = PSYCOPG_EXTENDED + Query("select 1").encode() + Terminate().encode()
    expected = FrameReader().feed(stream)
    reader = FrameReader()
    got = []
    for i in range(len(stream)):
        got += reader.feed(stream[i : i + 1])
    assert got == expected
    assert reader.buffered == 0


def test_frames_with_random_chunking():
    stream = b"".join(Query(f"select {i}").encode() for i in range(200))
    rng = random.Random(7)
    reader, got, pos = FrameReader(), [], 0
    while pos < len(stream):
        step = rng.randint(1, 40)
        got += reader.feed(memoryview(stream)[pos : pos + step])
        pos += step
    assert [pgwire.parse_query(p).sql for _, p in got] == [f"select {i}" for i in range(200)]


def test_partial_message_is_kept_and_can_be_drained():
    reader = FrameReader()
    assert reader.feed(b"Q\x00\x00") == []
    assert reader.feed(b"\x00\x0dselect") == []
    assert reader.buffered == 11
    assert reader.drain() == b"Q\x00\x00\x00\x0dselect"
    assert reader.buffered == 0


def test_oversized_message_is_refused_from_its_header():
    reader = FrameReader(max_message_size=1024)
    with pytest.raises(BadParameter, match="more than the 1024 allowed"):
        reader.feed(b"Q" + struct.pack("!i", 1024 + 5))
    assert FrameReader(max_message_size=1024).feed(pgwire.encode_message(b"d", b"x" * 1024))


@pytest.mark.parametrize("length", [-1, -(2**31), 0, 3])
def test_impossible_lengths_are_refused(length):
    with pytest.raises(BadParameter):
        FrameReader().feed(b"Q" + struct.pack("!i", length))


def test_large_message_in_small_chunks_is_linear():
    payload = b"x" * (16 * 1024 * 1024)
    message = pgwire.encode_message(b"d", payload)
    reader = FrameReader()
    start = time.perf_counter()
    out = []
    view = memoryview(message)
    for pos in range(0, len(message), 4096):
        out += reader.feed(view[pos : pos + 4096])
    elapsed = time.perf_counter() - start
    assert out == [(b"d", payload)]
    assert elapsed < 1.5, elapsed


def test_encode_message_needs_one_type_byte():
    with pytest.raises(BadParameter):
        pgwire.encode_message(b"QQ", b"")


# ----- frontend messages ---------------------------------------------------------------


FRONTEND_SAMPLES = [
    Query("select * from t where name = 'Zoë'; select 2"),
    Parse("stmt1", "insert into t values ($1, $2, $3)", [23, 25, 4294967295]),
    Parse("", "select 1"),
    Bind("portal", "stmt1", [0, 1, 0], [b"1", b"\x00\x01", None], [1]),
    Bind("", "", [], [], []),
    Execute("portal", 100),
    Close("S", "stmt1"),
    Close("P", ""),
    FunctionCall(764, [1], [b"\x00\x00\x00\x05", None], 1),
    Terminate(),
]


@pytest.mark.parametrize("message", FRONTEND_SAMPLES, ids=lambda m: type(m).__name__)
def test_frontend_round_trip(message):
    [(kind, payload)] = FrameReader().feed(message.encode())
    assert pgwire.parse_frontend_message(kind, payload) == message


@pytest.mark.parametrize("message", FRONTEND_SAMPLES, ids=lambda m: type(m).__name__)
def test_every_truncation_is_a_bad_parameter(message):
    [(kind, payload)] = FrameReader().feed(message.encode())
    for cut in range(len(payload)):
        try:
            parsed = pgwire.parse_frontend_message(kind, payload[:cut])
        except BadParameter:
            continue
        # A shorter payload may still parse (e.g. a Query cut after a NUL never does,
        # but a Bind cut cleanly cannot): it must at least differ from the original.
        assert parsed != message
    with pytest.raises(BadParameter):
        pgwire.parse_frontend_message(kind, payload + b"\x00junk")


def test_random_payloads_raise_only_bad_parameter():
    rng = random.Random(1234)
    kinds = [b"Q", b"P", b"B", b"E", b"C", b"F", b"X"]
    for _ in range(3000):
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        for kind in kinds:
            try:
                pgwire.parse_frontend_message(kind, payload)
            except BadParameter:
                pass


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        (b"Q", b"select 1"),  # no NUL terminator
        (b"C", b"Xname\x00"),  # kind must be S or P
        (b"C", b""),
        (b"B", b"\x00\x00\x00\x00\x00\x01\xff\xff\xff\xfe\x00\x00"),  # value length -2
        (b"B", b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x09abc\x00\x00"),  # value longer than payload
        (b"B", b"\x00\x00\xff\xff"),  # 65535 format codes announced, none present
        (b"P", b"\x00select 1\x00\x00\x03\x00\x00\x00\x17"),  # 3 OIDs announced, 1 present
        (b"E", b"\x00\x00\x00"),  # Int32 cut short
        (b"F", b"\x00\x00\x02\xfc\x00\x00\x00\x00"),  # result format missing
        (b"X", b"\x00"),  # Terminate has no body
    ],
)
def test_malformed_frontend_payloads(kind, payload):
    with pytest.raises(BadParameter, match="malformed"):
        pgwire.parse_frontend_message(kind, payload)


def test_invalid_utf8_in_sql_is_replaced_for_the_audit():
    assert pgwire.parse_query(b"select '\xff'\x00").sql == "select '\ufffd'"


def test_password_and_sasl_messages():
    assert pgwire.encode_password_message("pw") == b"p\x00\x00\x00\x07pw\x00"
    assert pgwire.encode_sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc") == (
        b"p" + struct.pack("!i", 4 + 14 + 4 + 11) + b"SCRAM-SHA-256\x00" + struct.pack("!i", 11) + b"n,,n=,r=abc"
    )
    assert pgwire.encode_sasl_response(b"c=biws") == b"p\x00\x00\x00\x0ac=biws"
    assert pgwire.encode_sync() == b"S\x00\x00\x00\x04"
    with pytest.raises(BadParameter):
        pgwire.encode_password_message("a\x00b")


# ----- bind parameters for the audit -----------------------------------------------------


@pytest.mark.parametrize(
    ("bind", "expected"),
    [
        (Bind("", "", [], [b"1", b"two", None], []), ["1", "two", None]),  # no codes: all text
        (Bind("", "", [0], [b"a", b"b"], []), ["a", "b"]),  # one code applies to all
        (Bind("", "", [1], [b"\x00\x01", b"\xff"], []), ["AAE=", "/w=="]),
        (Bind("", "", [0, 1, 0], [b"x", b"\x01\x02", None], []), ["x", "AQI=", None]),
        (Bind("", "", [0, 1], [b"a", b"b", b"c"], []), []),  # codes do not fit: dropped
        (Bind("", "", [0, 0, 0], [b"a"], []), []),
        (Bind("", "", [0], [b"caf\xc3\xa9", b"\xff"], []), ["café", "\ufffd"]),
        (Bind("", "", [7], [b"?"], []), ["<unknown format>"]),
        (Bind("", "", [], [], []), []),
    ],
)
def test_bind_parameters_for_audit(bind, expected):
    assert pgwire.bind_parameters_for_audit(bind) == expected


def test_binary_values_of_known_types_are_shown_as_text():
    values = [
        b"\x01",
        struct.pack("!q", -5),
        struct.pack("!i", 7),
        struct.pack("!d", 1.5),
        bytes(range(16)),
        b"\x01{}",
        b"\x00\x01",  # declared int8 but 2 bytes: base64
    ]
    oids = [16, 20, 23, 701, 2950, 3802, 20]
    bind = Bind("", "", [1] * len(values), values, [])
    assert pgwire.bind_parameters_for_audit(bind, oids) == [
        "t",
        "-5",
        "7",
        "1.5",
        "00010203-0405-0607-0809-0a0b0c0d0e0f",
        "{}",
        "AAE=",
    ]


# ----- backend messages ----------------------------------------------------------------


def test_backend_builders_produce_exact_bytes():
    assert pgwire.authentication_ok() == b"R\x00\x00\x00\x08\x00\x00\x00\x00"
    assert pgwire.ready_for_query() == b"Z\x00\x00\x00\x05I"
    assert pgwire.ready_for_query(b"T") == b"Z\x00\x00\x00\x05T"
    assert pgwire.parameter_status("TimeZone", "UTC") == b"S\x00\x00\x00\x11TimeZone\x00UTC\x00"
    assert pgwire.backend_key_data(99, b"\x00\x00\x00\x2a") == b"K\x00\x00\x00\x0c\x00\x00\x00\x63\x00\x00\x00\x2a"
    with pytest.raises(BadParameter):
        pgwire.ready_for_query(b"X")
    with pytest.raises(BadParameter):
        pgwire.backend_key_data(1, b"")


def test_backend_round_trips():
    def payload(message: bytes) -> bytes:
        [(_, body)] = FrameReader().feed(message)
        return body

    assert pgwire.parse_parameter_status(payload(pgwire.parameter_status("server_version", "15.18"))) == (
        "server_version",
        "15.18",
    )
    assert pgwire.parse_backend_key_data(payload(pgwire.backend_key_data(5, b"k" * 32))) == (5, b"k" * 32)
    assert pgwire.parse_ready_for_query(payload(pgwire.ready_for_query(b"E"))) == b"E"
    assert pgwire.parse_authentication(payload(pgwire.authentication_ok())) == (0, b"")
    assert pgwire.parse_authentication(payload(pgwire.authentication_md5_password(b"salt"))) == (5, b"salt")
    assert pgwire.parse_authentication(payload(pgwire.authentication_cleartext_password())) == (3, b"")
    code, data = pgwire.parse_authentication(
        payload(pgwire.authentication_sasl(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]))
    )
    assert code == pgwire.AUTH_SASL
    assert pgwire.parse_sasl_mechanisms(data) == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]


def test_error_and_notice_responses():
    message = pgwire.error_response("access to db denied", "28000", detail="no role", hint="ask an admin")
    assert message[:1] == b"E"
    fields = pgwire.parse_error_response(FrameReader().feed(message)[0][1])
    assert fields == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "28000",
        "M": "access to db denied",
        "D": "no role",
        "H": "ask an admin",
    }
    err = pgwire.parse_server_error(FrameReader().feed(message)[0][1])
    assert (err.severity, err.code, err.message, err.detail, err.hint) == (
        "FATAL",
        "28000",
        "access to db denied",
        "no role",
        "ask an admin",
    )
    assert str(err) == "FATAL: access to db denied (SQLSTATE 28000)"
    notice = pgwire.notice_response("hello")
    assert notice[:1] == b"N"
    assert pgwire.parse_server_error(notice[5:]).severity == "NOTICE"


def test_server_error_as_postgres_sends_it():
    # A real FATAL from PostgreSQL 15 for a wrong password (fields S V C M F L R).
    payload = (
        b'SFATAL\x00VFATAL\x00C28P01\x00Mpassword authentication failed for user "bob"\x00'
        b"Fauth.c\x00L335\x00Rauth_failed\x00\x00"
    )
    err = pgwire.parse_server_error(payload)
    assert (err.severity, err.code) == ("FATAL", "28P01")
    assert err.message == 'password authentication failed for user "bob"'
    assert pgwire.parse_error_response(payload)["R"] == "auth_failed"


@pytest.mark.parametrize(
    ("parser", "payload"),
    [
        (pgwire.parse_error_response, b"SFATAL\x00"),  # no final NUL
        (pgwire.parse_error_response, b"SFATAL"),
        (pgwire.parse_authentication, b"\x00\x00"),
        (pgwire.parse_parameter_status, b"a\x00"),
        (pgwire.parse_backend_key_data, b"\x00\x00\x00\x01\x00"),
        (pgwire.parse_backend_key_data, b"\x00\x00\x00\x01" + b"k" * 257),
        (pgwire.parse_ready_for_query, b""),
        (pgwire.parse_sasl_mechanisms, b"SCRAM-SHA-256\x00"),
    ],
)
def test_malformed_backend_payloads(parser, payload):
    with pytest.raises(BadParameter):
        parser(payload)


def test_ready_for_query_marks_a_message_boundary() -> None:
    z = pgwire.ready_for_query(b"I")
    assert pgwire.ends_with_ready_for_query(b"some data" + z)
    assert pgwire.ends_with_ready_for_query(pgwire.ready_for_query(b"T"))
    assert not pgwire.ends_with_ready_for_query(z[:-1])
    assert not pgwire.ends_with_ready_for_query(z[:-1] + b"X")
    assert not pgwire.ends_with_ready_for_query(b"")


def test_the_servers_answer_to_a_cancel_is_cut_off_for_a_fatal_of_our_own() -> None:
    rows = pgwire.encode_message(b"D", b"\x00\x01\x00\x00\x00\x01x")
    cancel = pgwire.error_response("canceling statement due to user request", "57014", severity="ERROR")
    z = pgwire.ready_for_query(b"I")
    assert pgwire.cut_trailing_cancel_error(rows + cancel + z) == rows
    assert pgwire.cut_trailing_cancel_error(cancel + z) == b""
    other = pgwire.error_response("division by zero", "22012", severity="ERROR")
    assert pgwire.cut_trailing_cancel_error(rows + other + z) is None  # not our cancel: keep it
    assert pgwire.cut_trailing_cancel_error(rows + cancel) is None  # no boundary yet
