"""One contract suite for every storage backend: memory, SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from common.errors import AlreadyExists, BadParameter, CompareFailed, ConnectionProblem, NotFound
from pteleport.storage.base import Backend, Item
from pteleport.storage.memory import MemoryBackend
from pteleport.storage.postgres import PostgresBackend
from pteleport.storage.sqlite import SQLiteBackend

START = datetime(2026, 11, 24, 13, 0, tzinfo=UTC)


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class Harness:
    """Opens backends of one kind on one shared store (memory: always the same object)."""

    kind: str
    opener: Callable[[FakeClock], Backend]
    clock: FakeClock = field(default_factory=FakeClock)
    opened: list[Backend] = field(default_factory=list)

    @property
    def persistent(self) -> bool:
        return self.kind != "memory"

    def open(self) -> Backend:
        backend = self.opener(self.clock)
        self.opened.append(backend)
        return backend


@pytest.fixture(scope="module")
def pg_storage_dsn(request: pytest.FixtureRequest) -> Iterator[tuple[object, str, str]]:
    """A fresh database for this module on the shared test PostgreSQL server.

    Its default collation is ICU en-US where the server has ICU, whose order differs
    from byte order ('a/%' > 'a%/x'), so the suite proves keys sort by code point anyway.
    """
    pg = request.getfixturevalue("pg")
    dbname = f"storage_contract_{uuid.uuid4().hex[:12]}"
    try:
        pg.execute(
            f"CREATE DATABASE \"{dbname}\" TEMPLATE template0 ENCODING 'UTF8' "
            "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
        )
    except Exception:  # no ICU in this server build: the server's default collation
        pg.execute(f'CREATE DATABASE "{dbname}"')
    dsn = f"host={pg.socket_dir} port={pg.port} user=postgres dbname={dbname}"
    yield pg, dbname, dsn
    pg.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    if request.param == "memory":
        shared: dict[str, MemoryBackend] = {}

        def opener(clock: FakeClock) -> Backend:
            return shared.setdefault("backend", MemoryBackend(clock=clock))

    elif request.param == "sqlite":
        path = tmp_path / "state" / "backend.db"

        def opener(clock: FakeClock) -> Backend:
            return SQLiteBackend(path, clock=clock)

    else:
        pg, dbname, dsn = request.getfixturevalue("pg_storage_dsn")
        pg.execute("DROP TABLE IF EXISTS items; DROP SEQUENCE IF EXISTS items_revision_seq", dbname=dbname)

        def opener(clock: FakeClock) -> Backend:
            return PostgresBackend(dsn, clock=clock)

    h = Harness(request.param, opener)
    yield h
    for backend in h.opened:
        backend.close()


@pytest.fixture
def backend(harness: Harness) -> Backend:
    return harness.open()


def item(key: str, value: bytes = b"v", expires: datetime | None = None) -> Item:
    return Item(key=key, value=value, expires=expires)


# --- create / get / put / update / delete --------------------------------------------


def test_create_then_get(backend: Backend) -> None:
    stored = backend.create(item("users/alice", b"\x00\x01binary\xff"))
    assert stored.revision > 0
    assert backend.get("users/alice") == stored
    assert backend.get("users/alice").value == b"\x00\x01binary\xff"


def test_create_ignores_the_callers_revision(backend: Backend) -> None:
    stored = backend.create(Item("k", b"v", revision=12345678))
    assert backend.get("k").revision == stored.revision


def test_empty_and_large_values_round_trip(backend: Backend) -> None:
    big = bytes(range(256)) * 4096
    backend.put(item("empty", b""))
    backend.put(item("big", big))
    assert backend.get("empty").value == b""
    assert backend.get("big").value == big


def test_create_existing_raises_already_exists(backend: Backend) -> None:
    backend.create(item("roles/admin"))
    with pytest.raises(AlreadyExists, match="roles/admin"):
        backend.create(item("roles/admin", b"other"))
    assert backend.get("roles/admin").value == b"v"


def test_get_missing_raises_not_found_naming_the_key(backend: Backend) -> None:
    with pytest.raises(NotFound, match="users/nobody"):
        backend.get("users/nobody")


def test_put_creates_and_overwrites(backend: Backend) -> None:
    first = backend.put(item("k", b"one"))
    second = backend.put(item("k", b"two"))
    assert second.revision > first.revision
    assert backend.get("k") == second
    assert backend.get("k").value == b"two"


def test_update_requires_an_existing_item(backend: Backend) -> None:
    with pytest.raises(NotFound, match="missing"):
        backend.update(item("missing"))
    first = backend.create(item("k", b"one"))
    updated = backend.update(item("k", b"two"))
    assert updated.revision > first.revision
    assert backend.get("k").value == b"two"


def test_delete(backend: Backend) -> None:
    backend.create(item("k"))
    backend.delete("k")
    with pytest.raises(NotFound):
        backend.get("k")
    with pytest.raises(NotFound, match="'k'"):
        backend.delete("k")


def test_create_after_delete_gets_a_higher_revision(backend: Backend) -> None:
    first = backend.create(item("k"))
    backend.delete("k")
    again = backend.create(item("k"))
    assert again.revision > first.revision


def test_revisions_grow_across_keys_and_operations(backend: Backend) -> None:
    revisions = [
        backend.create(item("a")).revision,
        backend.put(item("b")).revision,
        backend.update(item("a", b"x")).revision,
        backend.compare_and_swap(item("b"), item("b", b"y")).revision,
        backend.put(item("c")).revision,
    ]
    assert revisions == sorted(revisions)
    assert len(set(revisions)) == len(revisions)


@pytest.mark.parametrize("bad_key", ["", "nul\x00byte", "lone\ud800surrogate"])
def test_bad_keys_are_refused(backend: Backend, bad_key: str) -> None:
    with pytest.raises(BadParameter):
        backend.put(item(bad_key))
    with pytest.raises(BadParameter):
        backend.get(bad_key)


def test_values_must_be_bytes(backend: Backend) -> None:
    with pytest.raises(BadParameter):
        backend.put(Item("k", "text"))  # type: ignore[arg-type]


def test_naive_expiry_is_refused(backend: Backend) -> None:
    with pytest.raises(BadParameter):
        backend.put(item("k", expires=datetime(2030, 1, 1)))


def test_closed_backend_raises_connection_problem(harness: Harness) -> None:
    backend = harness.open()
    backend.put(item("k"))
    backend.close()
    with pytest.raises(ConnectionProblem):
        backend.get("k")


# --- compare and swap -----------------------------------------------------------------


def test_compare_and_swap(backend: Backend) -> None:
    first = backend.create(item("k", b"one"))
    swapped = backend.compare_and_swap(item("k", b"one"), item("k", b"two"))
    assert swapped.revision > first.revision
    assert backend.get("k").value == b"two"
    with pytest.raises(CompareFailed, match="'k'"):
        backend.compare_and_swap(item("k", b"one"), item("k", b"three"))
    assert backend.get("k").value == b"two"


def test_compare_and_swap_checks_the_revision_when_given(backend: Backend) -> None:
    current = backend.create(item("k", b"same"))
    backend.put(item("k", b"same"))  # same value, new revision
    with pytest.raises(CompareFailed):
        backend.compare_and_swap(current, item("k", b"new"))
    latest = backend.get("k")
    assert backend.compare_and_swap(latest, item("k", b"new")).value == b"new"


def test_compare_and_swap_on_a_missing_key_fails(backend: Backend) -> None:
    with pytest.raises(CompareFailed):
        backend.compare_and_swap(item("nothing", b""), item("nothing", b"x"))
    with pytest.raises(NotFound):
        backend.get("nothing")


def test_compare_and_swap_keys_must_match(backend: Backend) -> None:
    backend.create(item("a"))
    with pytest.raises(BadParameter):
        backend.compare_and_swap(item("a"), item("b"))


def test_compare_and_swap_can_set_an_expiry(harness: Harness) -> None:
    backend = harness.open()
    backend.create(item("k", b"one"))
    backend.compare_and_swap(item("k", b"one"), item("k", b"two", harness.clock() + timedelta(seconds=5)))
    harness.clock.advance(seconds=5)
    with pytest.raises(NotFound):
        backend.get("k")


def _backends_for_threads(harness: Harness, count: int) -> list[Backend]:
    """Memory: one shared object; SQLite/PostgreSQL: one object (connection) per thread."""
    return [harness.open() for _ in range(count)]


def test_concurrent_compare_and_swap_has_exactly_one_winner(harness: Harness) -> None:
    threads_count = 8
    backends = _backends_for_threads(harness, threads_count)
    backends[0].create(item("lock", b"free"))
    barrier = threading.Barrier(threads_count)
    outcomes: list[str] = []
    guard = threading.Lock()

    def contend(index: int) -> None:
        barrier.wait()
        try:
            backends[index].compare_and_swap(item("lock", b"free"), item("lock", f"held-{index}".encode()))
            result = f"won-{index}"
        except CompareFailed:
            result = "lost"
        with guard:
            outcomes.append(result)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(threads_count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(outcomes) == threads_count
    assert len(winners) == 1
    assert backends[0].get("lock").value == f"held-{winners[0].split('-')[1]}".encode()


def test_concurrent_increments_are_not_lost(harness: Harness) -> None:
    threads_count, increments = 4, 15
    backends = _backends_for_threads(harness, threads_count)
    backends[0].create(item("counter", b"0"))

    def bump(backend: Backend) -> None:
        for _ in range(increments):
            while True:
                current = backend.get("counter")
                new = item("counter", str(int(current.value) + 1).encode())
                try:
                    backend.compare_and_swap(current, new)
                    break
                except CompareFailed:
                    continue

    threads = [threading.Thread(target=bump, args=(b,)) for b in backends]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert backends[0].get("counter").value == str(threads_count * increments).encode()


def test_concurrent_creates_have_exactly_one_winner(harness: Harness) -> None:
    threads_count = 6
    backends = _backends_for_threads(harness, threads_count)
    barrier = threading.Barrier(threads_count)
    wins: list[int] = []

    def create(index: int) -> None:
        barrier.wait()
        try:
            backends[index].create(item("tokens/one-time", str(index).encode()))
            wins.append(index)
        except AlreadyExists:
            pass

    threads = [threading.Thread(target=create, args=(i,)) for i in range(threads_count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(wins) == 1
    assert backends[0].get("tokens/one-time").value == str(wins[0]).encode()


def _race(count: int, work: Callable[[int], str]) -> list[str]:
    """Run ``work(i)`` in ``count`` threads released together; their results."""
    barrier = threading.Barrier(count)
    results: list[str] = []
    guard = threading.Lock()

    def run(index: int) -> None:
        barrier.wait()
        outcome = work(index)
        with guard:
            results.append(outcome)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == count, "a thread did not finish"
    return results


@pytest.mark.parametrize("sharing", ["one handle", "a handle per thread"])
def test_racing_compare_and_swap_has_exactly_one_winner_per_revision(harness: Harness, sharing: str) -> None:
    """Every round, N threads hold the same revision and swap in the *same* bytes: only the
    revision tells them apart (no ABA), and exactly one of them wins each round."""
    threads_count, rounds = 8, 5
    backends = _backends_for_threads(harness, 1 if sharing == "one handle" else threads_count)
    backends[0].create(item("login/alice", b"state"))
    for _ in range(rounds):
        seen = backends[0].get("login/alice")

        def swap(index: int, seen: Item = seen) -> str:
            try:
                backends[index % len(backends)].compare_and_swap(seen, item("login/alice", b"state"))
            except CompareFailed:
                return "lost"
            return "won"

        outcomes = _race(threads_count, swap)
        assert outcomes.count("won") == 1, outcomes
        assert backends[0].get("login/alice").revision > seen.revision


def test_racing_deletes_claim_an_item_exactly_once(harness: Harness) -> None:
    """Delete-as-claim (single-use tokens): of N threads deleting one key, one succeeds."""
    threads_count = 8
    backends = _backends_for_threads(harness, threads_count)
    backends[0].create(item("tokens/single-use", b"t"))

    def claim(index: int) -> str:
        try:
            backends[index].delete("tokens/single-use")
        except NotFound:
            return "gone"
        return "claimed"

    outcomes = _race(threads_count, claim)
    assert outcomes.count("claimed") == 1, outcomes


# --- ranges ---------------------------------------------------------------------------

RANGE_KEYS = [
    "a/1",
    "a/10",
    "a/2",
    "a/%",
    "a/_",
    "a%/x",
    "a_/y",
    "ab/1",
    "a/é",
    "b/1",
    "é/1",
    "users/alice",
    "users/alice/params",
    "users/alicia",
]


@pytest.fixture
def ranged(backend: Backend) -> Backend:
    for key in RANGE_KEYS:
        backend.put(item(key, key.encode()))
    return backend


def keys(items: list[Item]) -> list[str]:
    return [i.key for i in items]


def test_range_by_prefix_is_sorted(ranged: Backend) -> None:
    assert keys(ranged.get_range("a/")) == ["a/%", "a/1", "a/10", "a/2", "a/_", "a/é"]
    assert [i.value for i in ranged.get_range("a/")] == [k.encode() for k in keys(ranged.get_range("a/"))]


def test_range_of_everything(ranged: Backend) -> None:
    assert keys(ranged.get_range("")) == sorted(RANGE_KEYS)


def test_range_limit(ranged: Backend) -> None:
    assert keys(ranged.get_range("a/", limit=2)) == ["a/%", "a/1"]
    assert keys(ranged.get_range("", limit=1)) == ["a%/x"]
    with pytest.raises(BadParameter):
        ranged.get_range("a/", limit=0)


def test_range_treats_like_wildcards_literally(ranged: Backend) -> None:
    assert keys(ranged.get_range("a%")) == ["a%/x"]
    assert keys(ranged.get_range("a_")) == ["a_/y"]
    assert keys(ranged.get_range("a/%")) == ["a/%"]
    assert keys(ranged.get_range("a/_")) == ["a/_"]
    assert keys(ranged.get_range("%")) == []


def test_range_prefix_is_a_plain_string_prefix(ranged: Backend) -> None:
    assert keys(ranged.get_range("users/alice/")) == ["users/alice/params"]
    assert keys(ranged.get_range("users/alic")) == ["users/alice", "users/alice/params", "users/alicia"]
    assert keys(ranged.get_range("é")) == ["é/1"]
    assert keys(ranged.get_range("zzz")) == []


def test_range_prefix_ending_in_the_last_code_point(backend: Backend) -> None:
    top = "\U0010ffff"
    for key in [f"x{top}", f"x{top}a", "y"]:
        backend.put(item(key))
    assert keys(backend.get_range(f"x{top}")) == [f"x{top}", f"x{top}a"]


def test_delete_range(ranged: Backend) -> None:
    assert ranged.delete_range("a_") == 1
    assert ranged.delete_range("a/") == 6
    assert ranged.delete_range("a/") == 0
    assert keys(ranged.get_range("a")) == ["a%/x", "ab/1"]
    assert ranged.delete_range("") == len(RANGE_KEYS) - 7
    assert ranged.get_range("") == []


# --- expiry ---------------------------------------------------------------------------


def test_expired_items_are_invisible(harness: Harness) -> None:
    backend = harness.open()
    expires = harness.clock() + timedelta(seconds=10)
    stored = backend.create(item("tokens/t1", b"secret", expires))
    backend.create(item("tokens/t2", b"forever"))
    assert backend.get("tokens/t1") == stored
    harness.clock.advance(seconds=9.999)
    assert backend.get("tokens/t1").value == b"secret"
    harness.clock.advance(seconds=0.001)  # expires == now: gone
    with pytest.raises(NotFound):
        backend.get("tokens/t1")
    assert keys(backend.get_range("tokens/")) == ["tokens/t2"]
    with pytest.raises(NotFound):
        backend.update(item("tokens/t1"))
    with pytest.raises(CompareFailed):
        backend.compare_and_swap(item("tokens/t1", b"secret"), item("tokens/t1", b"x"))
    with pytest.raises(NotFound):
        backend.delete("tokens/t1")


def test_create_over_an_expired_item_succeeds(harness: Harness) -> None:
    backend = harness.open()
    old = backend.create(item("k", b"old", harness.clock() + timedelta(minutes=1)))
    harness.clock.advance(minutes=2)
    new = backend.create(item("k", b"new"))
    assert new.revision > old.revision
    assert backend.get("k").value == b"new"
    assert backend.get("k").expires is None


def test_expiry_round_trips_in_utc(backend: Backend) -> None:
    plus_two = timezone(timedelta(hours=2))
    expires = datetime(2030, 5, 6, 9, 8, 7, 654321, tzinfo=plus_two)
    stored = backend.put(item("k", expires=expires))
    got = backend.get("k")
    assert got.expires == expires
    assert got.expires is not None and got.expires.utcoffset() == timedelta(0)
    assert stored.expires == got.expires


def test_delete_range_counts_only_live_items(harness: Harness) -> None:
    backend = harness.open()
    backend.put(item("s/1", expires=harness.clock() + timedelta(seconds=1)))
    backend.put(item("s/2"))
    harness.clock.advance(seconds=2)
    assert backend.delete_range("s/") == 1


def test_prune_expired(harness: Harness) -> None:
    backend = harness.open()
    for n in range(3):
        backend.put(item(f"e/{n}", expires=harness.clock() + timedelta(seconds=n + 1)))
    backend.put(item("e/keep"))
    harness.clock.advance(seconds=2)
    assert backend.prune_expired() == 2
    assert backend.prune_expired() == 0
    assert keys(backend.get_range("e/")) == ["e/2", "e/keep"]


# --- sharing and persistence ----------------------------------------------------------


def test_data_survives_reopening(harness: Harness) -> None:
    if not harness.persistent:
        pytest.skip("the memory backend forgets everything when closed")
    first = harness.open()
    stored = first.put(item("users/alice", b"hash"))
    first.close()
    second = harness.open()
    assert second.get("users/alice") == stored
    assert second.put(item("users/bob")).revision > stored.revision


def test_two_backends_on_one_store_see_each_others_writes(harness: Harness) -> None:
    if not harness.persistent:
        pytest.skip("the memory backend has no second handle")
    a, b = harness.open(), harness.open()
    written = a.put(item("k", b"from-a"))
    assert b.get("k") == written
    b.compare_and_swap(written, item("k", b"from-b"))
    assert a.get("k").value == b"from-b"
    b.delete("k")
    with pytest.raises(NotFound):
        a.get("k")
    assert b.put(item("k2")).revision > written.revision


# --- change feed (storage.feed) -------------------------------------------------------------
def _wait_for_kind(feed, kind: str, timeout: float = 10.0) -> set[str]:  # type: ignore[no-untyped-def]
    import time

    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while kind not in seen and "*" not in seen and time.monotonic() < deadline:
        seen |= feed.wait(0.5)
    return seen


def test_the_change_feed_reports_writes_made_through_another_connection_by_kind(harness: Harness) -> None:
    watcher = harness.open()
    feed = watcher.watch()
    try:
        writer = harness.open()
        writer.put(item("roles/auditor"))
        assert "roles" in _wait_for_kind(feed, "roles")
        writer.delete("roles/auditor")
        assert "roles" in _wait_for_kind(feed, "roles")
        writer.put(item("locks/l1"))
        seen = _wait_for_kind(feed, "locks")
        assert "locks" in seen and "users" not in seen
    finally:
        feed.close()


def test_the_change_feed_is_quiet_when_nothing_changes(harness: Harness) -> None:
    backend = harness.open()
    backend.put(item("users/early"))
    feed = backend.watch()
    try:
        feed.wait(0.3)  # what came before the feed opened, if reported at all
        assert feed.wait(0.3) == set()
    finally:
        feed.close()
