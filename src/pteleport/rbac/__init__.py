"""Roles, matchers and the access checker (pure: no I/O)."""
