"""A real driver's own tests, directly and through ``ptsh proxy db --tunnel``: pg8000's, a subset.

The whole run (pg8000's and asyncpg's suites both ways, several minutes) is
``./scripts/conformance``, which writes docs/conformance.md. Here a subset of pg8000's
tests (connections, authentication, COPY) runs against one PostgreSQL directly and
through a whole deployment; every test that passes directly must pass through the
tunnel, except the known losses of ``tests/conformance/allowlist.py`` (each with its
reason and issue number), and an allow-listed test that passes both ways must leave the
list. The side-by-side report is printed and written next to the runs' logs.

The other tests here check the comparison itself, without any server.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conformance import fetch
from tests.conformance.allowlist import KNOWN_LOSSES
from tests.conformance.classify import CATEGORIES, classify
from tests.conformance.compare import compare
from tests.conformance.deploy import Conformance, deploy, ipv6_loopback
from tests.conformance.report import render
from tests.conformance.run import Outcome, RunResult, run_suite
from tests.conformance.suites import PG8000

SUBSET = ("test/native/test_connection.py", "test/native/auth", "test/native/test_copy.py")


def _pypi_reachable() -> bool:
    try:
        with socket.create_connection(("pypi.org", 443), timeout=5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def pg8000() -> fetch.Prepared:
    cached = (fetch.cache_dir() / "sdists" / PG8000.sdist).exists()
    if not cached and not _pypi_reachable():
        pytest.skip(f"{PG8000.sdist} is not cached in {fetch.cache_dir()} and pypi.org cannot be reached")
    return fetch.prepare(PG8000)


@pytest.fixture(scope="module")
def conformance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Conformance]:
    if not ipv6_loopback():
        pytest.skip("no IPv6 loopback (::1) here: the direct path needs it (tests/conformance/deploy.py)")
    # An identity file (pctl auth sign) rather than ptsh login: no wait for a fresh TOTP step.
    dep = deploy(tmp_path_factory.mktemp("conformance"), log=lambda _msg: None, identity=True)
    try:
        dep.configure([PG8000])
        yield dep
    finally:
        dep.stop()


@pytest.mark.slow
@pytest.mark.conformance
def test_pg8000_subset_passes_through_the_tunnel_as_directly(
    pg8000: fetch.Prepared, conformance: Conformance, tmp_path: Path
) -> None:
    runs = {}
    for path in ("direct", "tunnel"):
        conformance.reset(PG8000)
        runs[path] = run_suite(pg8000, conformance.endpoint(path), tmp_path, select=list(SUBSET))
    result = compare(runs["direct"], runs["tunnel"])
    report = render([result], {"subset": ", ".join(SUBSET)}, "pytest tests/test_conformance.py")
    (tmp_path / "conformance.md").write_text(report, encoding="utf-8")
    print(report)
    direct, tunnel = runs["direct"], runs["tunnel"]
    where = f"(report and logs in {tmp_path})"
    # The subset really ran, and passes directly: otherwise the comparison says nothing.
    assert direct.count("passed") >= 40, f"only {direct.count('passed')} tests passed directly {where}"
    assert direct.count("failed") + direct.count("error") == 0, f"the subset fails directly {where}"
    assert set(direct.outcomes) == set(tunnel.outcomes), f"the two runs ran different tests {where}"
    new = [f"{d.nodeid} ({CATEGORIES[d.category].label}): {d.tunnel.message}" for d in result.new_losses]
    assert not new, f"pass directly but not through the tunnel {where}:\n" + "\n".join(new)
    assert not result.stale_allowances, (
        "these pass both ways now; remove them from tests/conformance/allowlist.py:\n"
        + "\n".join(result.stale_allowances)
    )


# --- the comparison itself ---------------------------------------------------------------


def _run(path: str, outcomes: dict[str, str]) -> RunResult:
    return RunResult("pg8000", path, {k: Outcome(v, f"msg {k}") for k, v in outcomes.items()}, 1.0, 0, Path("x"))


def test_a_loss_not_in_the_allow_list_is_new_and_a_fixed_entry_is_stale() -> None:
    known_lost, known_fixed = sorted(KNOWN_LOSSES["pg8000"])[:2]
    direct = _run("direct", {"t::a": "passed", "t::b": "failed", "t::c": "passed", known_lost: "passed",
                             known_fixed: "passed"})
    tunnel = _run("tunnel", {"t::a": "failed", "t::b": "passed", "t::c": "passed", known_lost: "failed",
                             known_fixed: "passed"})
    result = compare(direct, tunnel)
    assert [(d.nodeid, d.kind) for d in result.differences] == sorted(
        [("t::a", "lost"), ("t::b", "gained"), (known_lost, "lost")]
    )
    assert [d.nodeid for d in result.new_losses] == ["t::a"]
    assert result.stale_allowances == [known_fixed]


def test_a_test_missing_on_one_path_is_a_difference() -> None:
    result = compare(_run("direct", {"t::a": "passed"}), _run("tunnel", {}))
    assert [(d.nodeid, d.kind, d.tunnel.outcome) for d in result.differences] == [("t::a", "lost", "missing")]


@pytest.mark.parametrize(
    ("suite", "nodeid", "message", "category"),
    [
        ("pg8000", "test/native/test_connection.py::test_database_missing", "Failed: DID NOT RAISE DatabaseError",
         "database"),
        ("pg8000", "test/native/auth/test_gss.py::test_gss", "Failed: DID NOT RAISE InterfaceError", "server_auth"),
        ("pg8000", "test/native/auth/test_md5_ssl.py::test_ssl", "InterfaceError: Server refuses SSL", "tls_local"),
        ("pg8000", "test/native/auth/test_scram-sha-256.py::test_scram_sha_256",
         "the database at 127.0.0.1:1 does not accept TLS connections", "server_tls_off"),
        ("asyncpg", "tests/test_listeners.py::TestListeners::test_listen_01", "AssertionError: Tuples differ: (1,",
         "pid"),
        ("pg8000", "test/native/test_query.py::test_something_new", "AssertionError: 1 != 2", "unclassified"),
    ],
)
def test_losses_are_classified_from_their_test_and_message(suite: str, nodeid: str, message: str,
                                                           category: str) -> None:
    assert classify(suite, nodeid, message) == category


def test_a_cached_sdist_with_another_sha256_is_refused_and_deleted(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTELEPORT_CONFORMANCE_CACHE", str(tmp_path))
    cached = tmp_path / "sdists" / PG8000.sdist
    cached.parent.mkdir()
    cached.write_bytes(b"not the sdist PyPI lists")
    with pytest.raises(fetch.FetchError, match=r"SHA-256 .* not the 553b2402"):
        fetch.download(PG8000)
    assert not cached.exists()
