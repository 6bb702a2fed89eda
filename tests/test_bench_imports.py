"""Every module of ``./scripts/bench`` imports: the bench runs outside the suite, so a rename in
``src/`` would otherwise break it unseen (``bench.ha_sim`` once imported a helper that had moved)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

MODULES = sorted(p.stem for p in (Path(__file__).parent.parent / "bench").glob("*.py") if p.stem != "__main__")


@pytest.mark.parametrize("module", MODULES)
def test_the_bench_module_imports(module: str) -> None:
    importlib.import_module(f"bench.{module}")
