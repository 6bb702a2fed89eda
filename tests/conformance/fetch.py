"""Get a suite ready to run: its sdist from PyPI (SHA-256 checked), unpacked, and a virtualenv.

Everything lives in a cache directory (``.venv/conformance`` of the worktree unless
``$PTELEPORT_CONFORMANCE_CACHE`` says otherwise) and is reused while the pins in
``suites.py`` stay the same:

- ``sdists/NAME-VERSION.tar.gz``: ``pip download --no-binary NAME --no-deps NAME==VERSION``,
  kept only if its SHA-256 is the one recorded for the suite;
- ``src/NAME-VERSION/``: the unpacked sdist (its tests are what we run);
- ``venv/NAME-VERSION/``: a virtualenv with pytest, the suite's test dependencies and the
  driver itself, installed from that same verified sdist.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.conformance.suites import PYTEST, Suite

REPO = Path(__file__).resolve().parents[2]


class FetchError(RuntimeError):
    """The suite could not be downloaded, verified or installed (the message says why)."""


@dataclass(frozen=True)
class Prepared:
    suite: Suite
    source: Path  # the unpacked sdist
    python: Path  # the suite's virtualenv interpreter

    @property
    def pytest(self) -> Path:
        return self.python.parent / "pytest"


def cache_dir() -> Path:
    return Path(os.environ.get("PTELEPORT_CONFORMANCE_CACHE") or REPO / ".venv" / "conformance")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pip(python: Path | str, *args: str, timeout: float = 900) -> None:
    result = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "-q", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if "is ignored: it is neither" not in line]
        raise FetchError(f"pip {' '.join(args[:3])} ... failed:\n" + "\n".join(lines[-15:]))


def download(suite: Suite) -> Path:
    """The suite's sdist in the cache, downloaded if needed; raises unless its SHA-256 matches."""
    target = cache_dir() / "sdists" / suite.sdist
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            _pip(sys.executable, "download", "--no-deps", "--no-binary", suite.name, "-d", tmp,
                 f"{suite.name}=={suite.version}", timeout=600)
            got = Path(tmp) / suite.sdist
            if not got.exists():
                raise FetchError(f"pip did not download {suite.sdist} (got {sorted(os.listdir(tmp))})")
            os.replace(got, target)
    actual = sha256(target)
    if actual != suite.sha256:
        target.unlink()
        raise FetchError(
            f"{suite.sdist} has SHA-256 {actual}, not the {suite.sha256} recorded in tests/conformance/suites.py; "
            "it was deleted. If PyPI really changed the file, check why before updating the pin."
        )
    return target


def unpack(suite: Suite, sdist: Path) -> Path:
    root = cache_dir() / "src"
    source = root / f"{suite.name}-{suite.version}"
    stamp = source / ".pteleport-unpacked"
    if stamp.exists() and stamp.read_text() == suite.sha256:
        return source
    shutil.rmtree(source, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as tar:
        tar.extractall(root, filter="data")
    if not source.is_dir():
        raise FetchError(f"{sdist.name} did not unpack into {source.name}/")
    missing = [p for p in suite.test_paths if not (source / p).exists()]
    if missing:
        raise FetchError(f"the sdist {sdist.name} has no {', '.join(missing)}: its tests are not in it")
    stamp.write_text(suite.sha256)
    return source


def make_venv(suite: Suite, sdist: Path) -> Path:
    venv = cache_dir() / "venv" / f"{suite.name}-{suite.version}"
    python = venv / "bin" / "python"
    wanted = "\n".join([suite.sha256, *PYTEST, *suite.test_deps, suite.driver])
    stamp = venv / ".pteleport-installed"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    result = subprocess.run([base, "-m", "venv", str(venv)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise FetchError(f"could not create a virtualenv for {suite.name}: {result.stderr.strip()}")
    _pip(python, "install", *PYTEST, *suite.test_deps)
    driver = str(sdist) if suite.driver == "sdist" else suite.driver
    _pip(python, "install", "--no-deps", driver)
    stamp.write_text(wanted)
    return python


def prepare(suite: Suite) -> Prepared:
    """Download, verify, unpack and install ``suite``; cached after the first time."""
    sdist = download(suite)
    source = unpack(suite, sdist)
    return Prepared(suite, source, make_venv(suite, sdist))
