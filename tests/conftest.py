"""Shared fixtures: a real PostgreSQL (tests/pgserver.py) and the cluster harness (tests/harness.py).

A shell without job control starts background commands with SIGINT ignored, and children
inherit that, so the tests that press Ctrl+C on a ptsh or pteleport (SIGINT) would find it
deaf. The test process takes SIGINT back, so the programs it starts get it as a terminal
would give it.

The suite runs in parallel by default (pytest-xdist, ``-n 4 --dist loadfile`` in pyproject's addopts): each
file's tests run in one worker, in order, so a file's module fixtures (a cluster, agents)
start once. Each worker has its own PostgreSQL (the session fixture ``pg``), temporary
directories and free ports. The files that take longest start first (``LONGEST_FIRST``,
from measured wall times), so no worker is left with a long file at the end while the
others are idle. With ``-n 0`` everything runs in this one process.

Tests marked ``fault`` measure a deployment under load they make themselves (restarts under
20 busy sessions, 2,500 sessions and the memory they leave): they run alone. Every test
takes a shared lock on a file of this run's temporary root, a ``fault`` test an exclusive
one, so while it runs (its module fixtures' set-up and tear-down included) no other worker
runs a test; a second lock, taken briefly by everyone and held by the waiting ``fault``
test, keeps the other workers from starving it.
"""

import contextlib
import fcntl
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

pytest_plugins = ["tests.pgserver"]

# Longest first (wall time of the whole file, measured); then the other files with slow tests;
# then the rest, which fill the gaps at the end. Only the order changes: every test still runs.
LONGEST_FIRST = [
    "test_cli_contract.py",
    "test_cli_pctl.py",
    "test_cli_docs.py",
    "test_conformance.py",
    "test_login_e2e.py",
    "test_faults_e2e.py",
    "test_db_e2e.py",
    "test_getting_started.py",
    "test_dev_cluster.py",
    "test_ha_doc.py",
    "test_tunnel_refusals.py",
    "test_signals_e2e.py",
    "test_web_ui_browser.py",
    "test_ha_sessions.py",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    slow_files = {item.path.name for item in items if item.get_closest_marker("slow")}

    def key(item: pytest.Item) -> tuple[int, int]:
        name = item.path.name
        if name in rank:
            return (0, rank[name])
        return (1, 0) if name in slow_files else (2, 0)

    items.sort(key=key)  # stable: within a file, and among files of one rank, the order stays


def _run_root(config: pytest.Config) -> Path:
    """The temporary directory all workers of this run share (each has its own under it)."""
    base = config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # closing the file releases the lock


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return (yield)  # one process: nothing else runs anyway
    root = _run_root(item.config)
    gate, machine = root / "fault-gate.lock", root / "fault-machine.lock"
    if item.get_closest_marker("fault"):
        with _flock(gate, fcntl.LOCK_EX), _flock(machine, fcntl.LOCK_EX):
            return (yield)
    with _flock(gate, fcntl.LOCK_EX):
        pass  # a fault test waiting for the machine holds the gate: wait behind it
    with _flock(machine, fcntl.LOCK_SH):
        return (yield)
