"""Known losses: tests of the suites that pass directly but not through the tunnel, and why.

The conformance test (tests/test_conformance.py) and ``./scripts/conformance`` fail on a
test that passes directly and not through the tunnel unless it is listed here; they
also report an entry whose test now passes both ways, so the list only ever shrinks as
issue 10 gets fixed. Entries marked "by design" stay: the tunnel cannot offer what the
test needs. Losses seen only in some runs are also in ``INTERMITTENT``: passing once does
not make them stale, so remove them by hand when their fix lands. Measured first on 2026-12-01 against the code before the fixes of issue 10; the entries
those fixes cleared are gone (docs/conformance.md has the latest run).
"""

from __future__ import annotations

_TLS_LOCAL = "by design: the local tunnel listens in plain text (SSLRequest answered with N)"
_TLS_OFF = "by design: the test turns the server's TLS off (ALTER SYSTEM SET ssl = off); the agent requires TLS"
_GSS = ("by design: the agent authenticates to PostgreSQL with its certificate; the client never sees the "
        "server's GSSAPI request the test expects pg8000 to refuse")
_TERMINATED = ("issue 10 item 3: after pg_terminate_backend the client sometimes gets a TCP reset instead of "
               "the server's FATAL and EOF (ConnectionResetError, not the driver's 'network error'); intermittent")
_IN_FLIGHT = ("issue 10 item 4: four relayed hops still hold about 3 MiB in flight (128 KiB per socket per "
              "direction, common/sockets.py), so the client's 4 MiB of rows fit before the server's error is back; "
              "smaller socket buffers are weighed against throughput in bench/ (issue 14)")

KNOWN_LOSSES: dict[str, dict[str, str]] = {
    "pg8000": {
        # A backend terminated server-side.
        "test/dbapi/test_connection.py::test_broken_pipe_read": _TERMINATED,
        "test/native/test_connection.py::test_broken_pipe_read": _TERMINATED,
        # TLS between the client and the local tunnel.
        "test/dbapi/auth/test_md5_ssl.py::test_md5_ssl": _TLS_LOCAL,
        "test/dbapi/auth/test_scram-sha-256_ssl.py::test_scram_sha_256_ssl_context": _TLS_LOCAL,
        "test/legacy/auth/test_md5_ssl.py::test_ssl": _TLS_LOCAL,
        "test/native/auth/test_md5_ssl.py::test_ssl": _TLS_LOCAL,
        "test/native/auth/test_scram-sha-256_ssl.py::test_scram_sha_256_plus": _TLS_LOCAL,
        "test/native/auth/test_scram-sha-256_ssl.py::test_scram_sha_256_plus_ssl_True": _TLS_LOCAL,
        "test/native/auth/test_scram-sha-256_ssl.py::test_scram_sha_256_plus_ssl_custom": _TLS_LOCAL,
        # The server's TLS switched off by the test.
        "test/dbapi/auth/test_scram-sha-256.py::test_scram_sha_256": _TLS_OFF,
        "test/native/auth/test_scram-sha-256.py::test_scram_sha_256": _TLS_OFF,
        "test/native/auth/test_scram-sha-256.py::test_scram_sha_256_ssl_False": _TLS_OFF,
        # The server's own authentication request.
        "test/dbapi/auth/test_gss.py::test_gss": _GSS,
        "test/legacy/auth/test_gss.py::test_gss": _GSS,
        "test/native/auth/test_gss.py::test_gss": _GSS,
    },
    "asyncpg": {
        "tests/test_execute.py::TestExecuteMany::test_executemany_server_failure_during_writes": _IN_FLIGHT,
    },
}

# Known losses that show up in some runs only (timing): never reported as fixed.
INTERMITTENT: dict[str, set[str]] = {
    "pg8000": {
        "test/dbapi/test_connection.py::test_broken_pipe_read",
        "test/native/test_connection.py::test_broken_pipe_read",
    },
}
