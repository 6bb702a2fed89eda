"""Shared fixtures: a real PostgreSQL (tests/pgserver.py) and the cluster harness (tests/harness.py)."""

pytest_plugins = ["tests.pgserver"]
