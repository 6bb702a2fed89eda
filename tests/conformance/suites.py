"""The third-party driver test suites we run, pinned: version, sdist SHA-256, their test set-up.

Each suite's own test files come from its sdist on PyPI (downloaded at run time, checked
against the SHA-256 recorded here, never committed). We adapt the environment the way
the project's own CI does (environment variables, pg_hba lines, extensions), not their
code. A test that cannot run here on either path (not a property of the tunnel) is left
out with the reason, and the report prints that list.

How each suite finds its server:

- pg8000: ``test/*/conftest.py`` connects as user ``postgres``, password ``pw`` (or
  ``$PGPASSWORD``), to ``$PGHOST``:``$PGPORT``, database = the user; it asks for TLS first
  and falls back to plain text. Its CI adds pg_hba lines for the databases
  ``pg8000_md5``/``_password``/``_scram_sha_256``/``_gss`` and the ``hstore`` extension.
- asyncpg: ``asyncpg._testbase`` uses a running server when ``$PGHOST`` is set (libpq
  variables: PGHOST, PGPORT, PGUSER, PGDATABASE); its tests that need to start their own
  servers or edit pg_hba.conf skip themselves on such an "unmanaged" cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The pytest and plugins we run the suites with (their CI uses these plugins, unpinned).
PYTEST = ("pytest==9.2.0", "pytest-timeout==2.4.0")


@dataclass(frozen=True)
class Endpoint:
    """Where a suite's clients connect: PostgreSQL itself, or the local ptsh tunnel."""

    name: str  # "direct" or "tunnel"
    host: str
    port: int


@dataclass(frozen=True)
class Suite:
    name: str
    version: str
    sha256: str  # of the sdist, as PyPI lists it
    test_deps: tuple[str, ...]  # pinned, installed next to the driver in the suite's venv
    driver: str  # what to pip install as the driver: "sdist" (the verified file) or a requirement
    test_paths: tuple[str, ...]  # relative to the unpacked sdist
    pytest_args: tuple[str, ...] = ()
    # the suite's own pytest configuration file, relative to the sdist (None: it has none)
    pytest_config: str | None = None
    # node id -> why it runs on neither path here (printed in the report)
    not_run: dict[str, str] = field(default_factory=dict)
    # node id -> what we know of a test that fails directly but not through the tunnel
    notes: dict[str, str] = field(default_factory=dict)
    hba: tuple[str, ...] = ()  # pg_hba.conf lines for the direct path (from ::1)
    setup_sql: tuple[str, ...] = ()  # run as the superuser in database "postgres" before each run

    @property
    def sdist(self) -> str:
        return f"{self.name}-{self.version}.tar.gz"

    def env(self, endpoint: Endpoint) -> dict[str, str]:
        """The variables the suite reads to find its server."""
        if self.name == "pg8000":
            return {"PGHOST": endpoint.host, "PGPORT": str(endpoint.port), "PGPASSWORD": SUPERUSER_PASSWORD}
        host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host  # asyncpg's host:port syntax
        return {
            "PGHOST": host,
            "PGPORT": str(endpoint.port),
            "PGUSER": "postgres",
            "PGDATABASE": "postgres",
        }


SUPERUSER_PASSWORD = "pw"  # pg8000's conftest default

PG8000 = Suite(
    name="pg8000",
    version="1.31.6",
    sha256="553b240256d4b2d8f0ad2af28d07df1f9980247f74ac98d2c2b573762ec1ff1b",
    test_deps=("scramp==1.5.0", "python-dateutil==4.0.0", "pytz==2026.6", "pytest-mock==3.17.0",
               "pytest-benchmark==5.3.1"),
    driver="sdist",
    test_paths=("test",),
    # The benchmarks then run each timed function once, as a plain test.
    pytest_args=("--benchmark-disable",),
    not_run={
        "test/test_readme.py::test_readme": "its doctests connect to localhost:5432 with the password 'cpsnow' "
        "and read ../README.md from the current directory; neither can be set from the environment",
    },
    hba=(
        "host pg8000_md5 all ::1/128 md5",
        "host pg8000_gss all ::1/128 gss",
        "host pg8000_password all ::1/128 password",
        "host pg8000_scram_sha_256 all ::1/128 scram-sha-256",
    ),
    setup_sql=("CREATE EXTENSION IF NOT EXISTS hstore",),
)

ASYNCPG = Suite(
    name="asyncpg",
    version="0.32.0",
    sha256="45e64e56714d888330b884aad1dfb363d0bf43fb343e3d1a8968525f3bade478",
    test_deps=("distro==1.9.0",),
    # The C extension is built from the sdist we verified (a few minutes, once; cached).
    driver="sdist",
    test_paths=("tests",),
    pytest_config="pyproject.toml",
    not_run={},
    notes={
        f"tests/test_connect.py::TestConnectionGC::{name}": "fails whenever the connection uses TLS (checked with "
        "PGSSLMODE=disable: passes directly too); directly asyncpg negotiates TLS, the local tunnel is plain text"
        for name in ("test_no_explicit_close_no_debug", "test_no_explicit_close_with_debug")
    },
)

SUITES = {s.name: s for s in (PG8000, ASYNCPG)}
