"""`pctl status`: cluster name, version, CA rotation state and the CA pin (tctl status)."""

from __future__ import annotations

from typing import Any

from common.cli import render, safe_text
from pctl.output import Fmt, FormatOpt

CA_ORDER = ("host", "user", "db")


def status_text(doc: dict[str, Any]) -> str:
    rows = [("Cluster", doc.get("cluster_name", "")), ("Version", doc.get("version", ""))]
    cas = {ca.get("type"): ca for ca in doc.get("cas", [])}
    order = [t for t in CA_ORDER if t in cas] + sorted(t for t in cas if t not in CA_ORDER)
    rows += [(f"{t} CA", cas[t].get("rotation") or "never updated") for t in order]
    pins = doc.get("ca_pins") or [doc.get("ca_pin", "")]
    rows += [("CA pin", pin) for pin in pins]
    width = max(len(label) for label, _ in rows) + 1  # Teleport's CA labels end in a space
    return "\n".join(f"{label.ljust(width)} {safe_text(value)}".rstrip() for label, value in rows)


def status(fmt: FormatOpt = Fmt.text) -> None:
    """Show the cluster's name, version, CAs and the CA pin agents join with."""
    from pctl.connect import client

    with client() as api:
        doc = api.get("/v1/status")
    render(doc, fmt, status_text)
