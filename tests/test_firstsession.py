"""``ptsh.firstsession``: the first session of ``ptsh db connect``, relayed without asyncio.

In process, with real sockets and real TLS: a stand-in proxy (a thread with a TLS server
socket that answers a StartupMessage with AuthenticationOk, BackendKeyData and
ReadyForQuery, then echoes) and a stand-in psql (a child process, since ``serve`` waits for
psql's exit). The end-to-end behaviour with the real proxy, agent and psql is in
tests/test_db_e2e.py, tests/test_ptsh_entry.py and tests/test_tunnel_refusals.py.
"""

from __future__ import annotations

import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from common.errors import AccessDenied, ConnectionProblem, NotLoggedIn
from common.tls import server_context
from common.tlsctx import INTERNAL_SNI, client_context
from ptsh.firstsession import FirstSession, serve
from ptsh.pgstartup import ProxyTrouble, refusal, startup_packet

PARAMS = {"user": "alice", "database": "postgres", "application_name": "psql"}
GREETING = (
    b"R" + struct.pack("!ii", 8, 0)
    + b"K" + struct.pack("!iii", 12, 4242, 99)
    + b"Z" + struct.pack("!i", 5) + b"I"
)


class StandInProxy:
    """Accepts TLS connections; answers each startup packet per ``answer``, then echoes.

    ``end_first``: the first session is closed right after its greeting (an agent that
    went away before psql connected).
    """

    def __init__(self, answer: bytes = GREETING, end_first: bool = False) -> None:
        from pteleport.ca.authority import self_signed_web_cert

        cert, key = self_signed_web_cert([INTERNAL_SNI], datetime.now(UTC))
        self.ca = cert
        self.ctx = server_context(cert, key)
        self.answer = answer
        self.end_first = end_first
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.startups: list[bytes] = []
        self.echoed = 0
        self.goodbyes = 0  # Terminate messages received
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            with self.ctx.wrap_socket(raw, server_side=True) as tls:
                head = _exactly(tls, 4)
                self.startups.append(head + _exactly(tls, struct.unpack("!i", head)[0] - 4))
                tls.sendall(self.answer)
                if self.end_first and len(self.startups) == 1:
                    return
                while data := tls.recv(65536):
                    if data == b"X\x00\x00\x00\x04":
                        self.goodbyes += 1
                        return
                    self.echoed += len(data)
                    tls.sendall(data)
        except OSError:
            pass

    def session(self) -> FirstSession:
        ctx = client_context(cas=self.ca)
        return FirstSession("127.0.0.1", self.port, ctx, ProxyTrouble(f"127.0.0.1:{self.port}", "log in again"))

    def close(self) -> None:
        self.listener.close()


def _exactly(sock: ssl.SSLSocket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionResetError
        data += chunk
    return data


@pytest.fixture
def proxy() -> Iterator[StandInProxy]:
    p = StandInProxy()
    yield p
    p.close()


# A psql stand-in: connects, sends SSLRequest + StartupMessage, checks the answers, sends
# SIZE bytes and reads them back, prints what it got and exits 0 (3 when anything differs).
CLIENT = r"""
import socket, struct, sys, hashlib
port, size, startup = int(sys.argv[1]), int(sys.argv[2]), bytes.fromhex(sys.argv[3])
s = socket.create_connection(("127.0.0.1", port), timeout=20)  # (a stalled relay fails, not hangs)
s.sendall(struct.pack("!ii", 8, 80877103))
assert s.recv(1) == b"N"
s.sendall(startup)
def exactly(n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            return data
        data += chunk
    return data
first = exactly(1)
if first == b"E":
    n = struct.unpack("!i", exactly(4))[0]
    print("ERROR", exactly(n - 4).decode(errors="replace"))
    sys.exit(2)
greeting = first + exactly(len(sys.argv[4]) // 2 - 1)
if greeting.hex() != sys.argv[4]:
    sys.exit(3)
payload = bytes(range(256)) * (size // 256)
import threading
threading.Thread(target=lambda: s.sendall(payload), daemon=True).start()
back = exactly(len(payload))
print("ECHO", len(back), back == payload)
s.sendall(b"X\x00\x00\x00\x04")
sys.exit(0 if back == payload else 3)
"""


def _psql(port: int, size: int, params: dict[str, str] = PARAMS) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CLIENT, str(port), str(size), startup_packet(params).hex(),
                             GREETING.hex()], stdout=subprocess.PIPE, text=True)


def _run(proxy: StandInProxy, size: int, params: dict[str, str] = PARAMS,
         more: object = None) -> tuple[int, str, list[str]]:
    session = proxy.session()
    session.open(PARAMS)
    listening = socket.create_server(("127.0.0.1", 0), backlog=8)
    calls: list[str] = []

    def default_more() -> None:
        calls.append("more")

    client = _psql(listening.getsockname()[1], size, params)
    try:
        code = serve(listening, client.pid, session, more or default_more)  # type: ignore[arg-type]
    finally:
        listening.close()
    out = client.stdout.read() if client.stdout else ""
    client.wait()
    return code, out, calls


def test_the_opened_session_is_psqls_and_bytes_flow_both_ways_in_bulk(proxy: StandInProxy) -> None:
    """8 MiB each way at once: the relay must not deadlock when both directions are full."""
    code, out, calls = _run(proxy, 8 * 1024 * 1024)
    assert (code, out.split()) == (0, ["ECHO", str(8 * 1024 * 1024), "True"])
    assert len(proxy.startups) == 1, "psql got the session opened before it, not a second one"
    assert proxy.startups[0] == startup_packet(PARAMS)
    assert calls == []
    deadline = time.monotonic() + 5
    while proxy.goodbyes == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.goodbyes == 1, "psql's Terminate reached the proxy, though psql exited right after it"


def test_a_client_that_asks_for_other_parameters_gets_its_own_session(proxy: StandInProxy) -> None:
    other = {**PARAMS, "application_name": "script"}
    code, out, _calls = _run(proxy, 4096, other)
    assert code == 0, out
    assert proxy.startups == [startup_packet(PARAMS), startup_packet(other)]


def test_a_second_connection_is_handed_on(proxy: StandInProxy) -> None:
    """psql's Ctrl+C (a CancelRequest on a new connection) starts the asyncio tunnel: ``more``."""
    session = proxy.session()
    session.open(PARAMS)
    listening = socket.create_server(("127.0.0.1", 0), backlog=8)
    port = listening.getsockname()[1]
    handed: list[socket.socket] = []

    def more() -> None:
        conn, _ = listening.accept()  # what the asyncio tunnel would do on this socket
        handed.append(conn)

    # A stand-in psql that opens its session and then a second connection, as a cancel does.
    script = CLIENT.replace('print("ECHO"', 'socket.create_connection(("127.0.0.1", port)).sendall(b"cancel");'
                            ' print("ECHO"')
    client = subprocess.Popen([sys.executable, "-c", script, str(port), "256", startup_packet(PARAMS).hex(),
                               GREETING.hex()], stdout=subprocess.PIPE, text=True)
    try:
        code = serve(listening, client.pid, session, more)
    finally:
        listening.close()
    assert code == 0
    assert len(handed) == 1 and handed[0].recv(6) == b"cancel"


def test_when_no_tunnel_can_start_later_connections_get_the_sentence(proxy: StandInProxy) -> None:
    def more() -> None:
        raise NotLoggedIn("your ptsh login expired; run `ptsh login`")

    code, out = _with_a_second_connection(proxy, more)
    assert code == 0, out
    assert "ERROR SFATAL" in out and "your ptsh login expired; run `ptsh login`" in out, out


def test_psql_exit_code_is_returned_even_when_it_never_connects(proxy: StandInProxy) -> None:
    session = proxy.session()
    session.open(PARAMS)
    listening = socket.create_server(("127.0.0.1", 0), backlog=8)
    client = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(7)"])
    try:
        assert serve(listening, client.pid, session, lambda: None) == 7
    finally:
        listening.close()
    assert proxy.startups == [startup_packet(PARAMS)]
    deadline = time.monotonic() + 5
    while proxy.goodbyes == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.goodbyes == 1, "the session psql never took was ended with a Terminate"


def test_our_refusal_at_the_start_is_the_error_with_its_kind() -> None:
    p = StandInProxy(answer=refusal(AccessDenied("access to db denied")))
    try:
        with pytest.raises(AccessDenied, match="access to db denied"):
            p.session().open(PARAMS)
    finally:
        p.close()


def test_postgres_own_refusal_leaves_no_session_for_psql_to_report() -> None:
    own = b"SFATAL\x00VFATAL\x00C3D000\x00Mdatabase \"x\" does not exist\x00Rinit\x00\x00"
    p = StandInProxy(answer=b"E" + struct.pack("!i", len(own) + 4) + own)
    try:
        session = p.session()
        session.open(PARAMS)
        assert session.upstream is None
    finally:
        p.close()


def test_a_proxy_that_is_down_is_cannot_reach() -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    session = FirstSession("127.0.0.1", port, client_context(), ProxyTrouble(f"127.0.0.1:{port}", "log in again"))
    with pytest.raises(ConnectionProblem, match=rf"cannot reach the proxy at 127.0.0.1:{port} \(Connection refused\)"):
        session.open(PARAMS)


def test_a_proxy_this_login_does_not_trust_is_not_logged_in(proxy: StandInProxy) -> None:
    from pteleport.ca.authority import self_signed_web_cert

    other, _key = self_signed_web_cert([INTERNAL_SNI], datetime.now(UTC))
    trouble = ProxyTrouble(f"127.0.0.1:{proxy.port}", "run `ptsh login`")
    session = FirstSession("127.0.0.1", proxy.port, client_context(cas=other), trouble)
    with pytest.raises(NotLoggedIn, match="presented a certificate this login does not trust"):
        session.open(PARAMS)


def test_what_psql_sent_just_before_it_exited_is_still_forwarded() -> None:
    """psql's exit can be seen before its last bytes (its Terminate): ``finish`` forwards them."""
    import selectors

    from ptsh.firstsession import _Relay

    psql_end, client = _tcp_pair()
    upstream, proxy_end = _tcp_pair()
    sel = selectors.DefaultSelector()
    relay = _Relay(client, upstream, sel)  # (plain TCP upstream: the relay does not care)
    psql_end.sendall(b"X\x00\x00\x00\x04")
    psql_end.close()  # psql is gone; nothing was read from its socket yet
    relay.finish()
    proxy_end.settimeout(2)
    assert proxy_end.recv(16) == b"X\x00\x00\x00\x04"
    assert proxy_end.recv(16) == b""  # and then the session is closed
    sel.close()


def test_psql_ended_by_a_signal_is_reported_as_the_signal(proxy: StandInProxy) -> None:
    """``serve`` gives subprocess's -N; ``ptsh.connect`` turns it into a shell's 128 + N."""
    session = proxy.session()
    session.open(PARAMS)
    listening = socket.create_server(("127.0.0.1", 0), backlog=8)
    client = subprocess.Popen([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"])
    try:
        assert serve(listening, client.pid, session, lambda: None) == -15
    finally:
        listening.close()


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        one = socket.create_connection(listener.getsockname())
        two, _ = listener.accept()
    return one, two


def test_a_session_that_ended_before_psql_came_is_not_handed_on() -> None:
    p = StandInProxy(end_first=True)
    try:
        code, out, _calls = _run(p, 4096)
        assert (code, out.split()) == (0, ["ECHO", "4096", "True"])
        assert p.startups == [startup_packet(PARAMS)] * 2  # psql got a new session
    finally:
        p.close()


def test_when_the_tunnel_fails_to_start_psql_goes_on_and_later_connections_get_a_sentence(
    proxy: StandInProxy,
) -> None:
    """Whatever ``more`` raises (here not one of ours), psql and its first session are left alone."""
    def more() -> None:
        raise RuntimeError("no event loop today")

    code, out = _with_a_second_connection(proxy, more)
    assert code == 0, out
    assert "the local tunnel could not take a new connection (no event loop today)" in out, out
    assert "ECHO 256 True" in out, out


def _with_a_second_connection(proxy: StandInProxy, more: object) -> tuple[int, str]:
    """A stand-in psql with a session that, meanwhile, opens a second connection (which gets
    what ``more`` leaves it: here an ErrorResponse); serve's result and what psql printed."""
    session = proxy.session()
    session.open(PARAMS)
    listening = socket.create_server(("127.0.0.1", 0), backlog=8)
    port = listening.getsockname()[1]
    script = CLIENT.replace('print("ECHO"', 'import subprocess; print(subprocess.run([sys.executable, "-c", '
                            'SECOND, str(port), "0", sys.argv[3], sys.argv[4]], capture_output=True, text=True).stdout,'
                            ' end=""); print("ECHO"')
    script = "SECOND = " + repr(CLIENT) + "\n" + script
    client = subprocess.Popen([sys.executable, "-c", script, str(port), "256", startup_packet(PARAMS).hex(),
                               GREETING.hex()], stdout=subprocess.PIPE, text=True)
    try:
        code = serve(listening, client.pid, session, more)  # type: ignore[arg-type]
    finally:
        listening.close()
    return code, client.stdout.read() if client.stdout else ""
