"""A pytest plugin loaded into a third-party driver's own test run: one outcome per test, as JSON.

It runs inside the suite's virtualenv (``-p conformance_outcomes`` with this directory on
PYTHONPATH) and imports nothing from pteleport. At the end of the session it writes
``$CONFORMANCE_OUTCOMES`` (a JSON object: node id -> {"outcome", "message"}), where the
outcome is one of passed, failed, skipped, error:

- error: the setup or teardown of the test failed (a fixture, a class set-up);
- failed: the test body failed, or one of its subtests did;
- skipped: the test skipped itself (or was marked to);
- passed: everything else.

The message is the last line of the failure (exception type and text), or the skip
reason, cut to a few hundred characters: enough to classify a difference.
"""

from __future__ import annotations

import json
import os
from typing import Any

_RANK = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}
_results: dict[str, dict[str, str]] = {}


def _message(report: Any) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])[:300]
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return str(crash.message).strip()[:300]
    text = str(report.longrepr or "").strip()
    return text.splitlines()[-1][:300] if text else ""


def _record(nodeid: str, outcome: str, message: str) -> None:
    current = _results.get(nodeid)
    if current is None or _RANK[outcome] > _RANK[current["outcome"]]:
        _results[nodeid] = {"outcome": outcome, "message": message}


def pytest_runtest_logreport(report: Any) -> None:
    subtest = type(report).__name__ == "SubtestReport" or getattr(report, "context", None) is not None
    if report.passed:
        _record(report.nodeid, "passed", "")
    elif report.skipped:
        if not subtest:  # a skipped subtest does not make its test skipped
            _record(report.nodeid, "skipped", _message(report))
    elif report.when == "call" or subtest:
        _record(report.nodeid, "failed", _message(report))
    else:
        _record(report.nodeid, "error", f"in {report.when}: {_message(report)}")


def pytest_collectreport(report: Any) -> None:
    if report.failed:
        _record(report.nodeid or "<collection>", "error", f"collection: {_message(report)}")


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    path = os.environ.get("CONFORMANCE_OUTCOMES")
    if path:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(_results, fh, indent=1, sort_keys=True)
