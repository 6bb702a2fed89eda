"""Audit events with Teleport's names and codes, and where they are kept."""
