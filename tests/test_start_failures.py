"""`pteleport start` that fails (busy port, bad --listen) leaves no half-made data dir, says
why in one sentence, and never touches an existing cluster's data."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import PCTL, PTELEPORT, Cluster, base_env, run

pytestmark = pytest.mark.slow


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def start(data_dir: Path, listen: str) -> tuple[int, str]:
    result = run([PTELEPORT, "start", "--data-dir", str(data_dir), "--listen", listen], base_env(), timeout=60)
    return result.returncode, result.stderr


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_busy_port_leaves_no_new_data_dir(tmp_path: Path, busy_port: int) -> None:
    data_dir = tmp_path / "parent" / "cluster"
    code, err = start(data_dir, f"127.0.0.1:{busy_port}")
    assert code == 1
    assert err.startswith("ERROR: cannot listen: ") and "address already in use" in err and "--listen" in err
    assert err.count("\n") == 1 and "Traceback" not in err and "unexpected" not in err
    assert not (tmp_path / "parent").exists()  # the parents it made are gone too


def test_a_busy_port_empties_an_empty_data_dir_but_keeps_it(tmp_path: Path, busy_port: int) -> None:
    data_dir = tmp_path / "made-by-the-admin"
    data_dir.mkdir(mode=0o750)
    assert start(data_dir, f"127.0.0.1:{busy_port}")[0] == 1
    assert data_dir.is_dir() and list(data_dir.iterdir()) == []
    assert data_dir.stat().st_mode & 0o777 == 0o750


def test_a_bad_listen_address_makes_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "cluster"
    code, err = start(data_dir, "127.0.0.1:abc")
    assert (code, err) == (2, 'ERROR: --listen "127.0.0.1:abc" is not HOST:PORT with a port from 0 to 65535, e.g. '
                           '--listen=127.0.0.1:3080\n')
    assert not data_dir.exists()


def test_a_failed_start_never_touches_an_existing_cluster(tmp_path: Path, busy_port: int) -> None:
    data_dir = tmp_path / "cluster"
    with Cluster(data_dir) as cluster:
        pin = json.loads(run([PCTL, "status", "--format=json"], cluster.env()).stdout)["ca_pin"]
    before = tree(data_dir)
    assert start(data_dir, f"127.0.0.1:{busy_port}")[0] == 1
    after = tree(data_dir)
    assert after.keys() >= before.keys()
    # Keys, certificates and identity files are byte for byte the same (the databases were
    # opened, so only their files may differ; the CA pin below shows their content is intact).
    assert {k: v for k, v in after.items() if k.endswith((".pem", ".json"))} == {
        k: v for k, v in before.items() if k.endswith((".pem", ".json"))
    }
    with Cluster(data_dir) as cluster:  # and it still starts, as the same cluster
        assert json.loads(run([PCTL, "status", "--format=json"], cluster.env()).stdout)["ca_pin"] == pin
