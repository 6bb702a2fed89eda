"""Why a test that passes directly does not pass through the tunnel: one reason category each.

Categories either point at a behaviour issue 10 asks to fix (the client should see what
it sees directly) or say why the test cannot pass through ``ptsh proxy db --tunnel`` by
design ("not applicable: ..."). A test is put in a category by the rules below, read
from the failures of a real run (docs/conformance.md shows the messages); the rules look
at the test's name and at the failure message. What no rule matches is "unclassified",
shown with its message, so a new kind of difference is never hidden.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Category:
    label: str
    why: str  # what goes wrong, and where it is tracked (or why it is by design)
    by_design: bool = False


CATEGORIES: dict[str, Category] = {
    "database": Category(
        "database switch ignored",
        "the client's database is replaced by the route's (a missing database connects into `postgres`); "
        "issue 10, item 1",
    ),
    "user": Category("user switch ignored", "the client's user is replaced by the route's db user; issue 10, item 1"),
    "pid": Category(
        "backend pid differs",
        "the client is told a made-up BackendKeyData, so `pg_terminate_backend(<driver's pid>)` and NOTIFY "
        "pids do not match; issue 10, item 2",
    ),
    "terminated": Category(
        "server-side termination not seen",
        "a backend killed server-side does not reach the client as the server's FATAL then EOF; issue 10, item 3",
    ),
    "in_flight": Category(
        "server's error arrives late",
        "every hop buffers without limit, so the client finishes writing (or the server finishes sending) "
        "before an error or a cancel takes effect; issue 10, item 4",
    ),
    "cancel": Category("cancel", "a CancelRequest does not reach the session's server backend; issue 10, item 2"),
    "malformed": Category(
        "malformed input closes silently",
        "no 08P01 ErrorResponse before the close; issue 10, item 5",
    ),
    "leftover": Category(
        "left-over of an earlier failure",
        "an earlier test lost through the tunnel skipped its clean-up (e.g. a role it created), and this one "
        "trips over it; goes away with that test's fix",
    ),
    "tls_local": Category(
        "not applicable: TLS to the local tunnel",
        "`ptsh proxy db --tunnel` listens in plain text on 127.0.0.1 and answers SSLRequest with N; the TLS "
        "is the tunnel's own, to the proxy",
        by_design=True,
    ),
    "server_tls_off": Category(
        "not applicable: the test turns the server's TLS off",
        "the test runs `ALTER SYSTEM SET ssl = off`; the agent never talks to a database without TLS",
        by_design=True,
    ),
    "server_auth": Category(
        "not applicable: the server's authentication method",
        "the agent authenticates to PostgreSQL with its own certificate; the client never sees the server's "
        "authentication request (here: GSSAPI, which the test expects the driver to refuse)",
        by_design=True,
    ),
    "unclassified": Category("unclassified", "no rule matched: read the message and add a rule"),
}

# (suite or "*", regex on the node id, regex on the tunnel failure message or "", category)
RULES: list[tuple[str, str, str, str]] = [
    ("*", r"", r"does not accept TLS connections", "server_tls_off"),
    ("*", r"", r"Server refuses SSL|isinstance\(.*SSLSocket\)", "tls_local"),
    ("pg8000", r"test_gss", r"DID NOT RAISE", "server_auth"),
    ("*", r"", r'role "[^"]+" already exists', "leftover"),
    ("pg8000", r"(?i)database|md5|password", r"DID NOT RAISE", "database"),
    ("asyncpg", r"test_listen", r"Tuples differ", "pid"),
    ("asyncpg", r"idle_connection_loss|terminat", r"", "pid"),
    ("asyncpg", r"type_cache_invalidation_in_pool", r"already exists", "database"),
    ("asyncpg", r"server_failure_during_writes", r"should stop early", "in_flight"),
    ("*", r"broken_pipe|terminat", r"ConnectionResetError|reset by peer", "terminated"),
    ("*", r"(?i)cancel", r"", "cancel"),
    ("*", r"", r"(?i)database .* does not exist|current_database", "database"),
    ("*", r"", r"(?i)current_user|session_user", "user"),
    ("*", r"", r"(?i)\bpid\b|backend_pid", "pid"),
]


def classify(suite: str, nodeid: str, message: str) -> str:
    """The category key for a test lost through the tunnel."""
    for rule_suite, id_pattern, msg_pattern, key in RULES:
        if rule_suite not in ("*", suite):
            continue
        if id_pattern and not re.search(id_pattern, nodeid):
            continue
        if msg_pattern and not re.search(msg_pattern, message):
            continue
        return key
    return "unclassified"
