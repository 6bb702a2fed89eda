"""Side by side: the outcome of each test directly and through the tunnel, and what differs.

- lost: passed directly, did not pass through the tunnel (what issue 10 is about);
- gained: passed through the tunnel only (usually a test that is flaky directly);
- changed: did not pass either way, but differently (e.g. skipped directly, error through).

A lost test gets a reason category (``classify.py``) and is checked against the
allow-list of known losses (``allowlist.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.conformance.allowlist import INTERMITTENT, KNOWN_LOSSES
from tests.conformance.classify import classify
from tests.conformance.run import Outcome, RunResult

MISSING = Outcome("missing", "the test did not run on this path")


@dataclass
class Difference:
    nodeid: str
    kind: str  # lost, gained, changed
    direct: Outcome
    tunnel: Outcome
    category: str = ""
    allowed: str = ""  # the allow-list's reason, when the loss is a known one


@dataclass
class Comparison:
    suite: str
    direct: RunResult
    tunnel: RunResult
    differences: list[Difference]

    def of_kind(self, kind: str) -> list[Difference]:
        return [d for d in self.differences if d.kind == kind]

    @property
    def new_losses(self) -> list[Difference]:
        """Lost through the tunnel and not in the allow-list."""
        return [d for d in self.of_kind("lost") if not d.allowed]

    @property
    def stale_allowances(self) -> list[str]:
        """Allow-listed tests (not intermittent ones) that ran and passed both ways: the entry should go."""
        known = KNOWN_LOSSES.get(self.suite, {})
        intermittent = INTERMITTENT.get(self.suite, set())
        return sorted(
            nodeid for nodeid in known
            if nodeid not in intermittent
            and self.direct.outcomes.get(nodeid, MISSING).outcome == "passed"
            and self.tunnel.outcomes.get(nodeid, MISSING).outcome == "passed"
        )


def compare(direct: RunResult, tunnel: RunResult) -> Comparison:
    suite = direct.suite
    known = KNOWN_LOSSES.get(suite, {})
    differences = []
    for nodeid in sorted(set(direct.outcomes) | set(tunnel.outcomes)):
        d = direct.outcomes.get(nodeid, MISSING)
        t = tunnel.outcomes.get(nodeid, MISSING)
        if d.outcome == t.outcome:
            continue
        if d.outcome == "passed":
            differences.append(Difference(nodeid, "lost", d, t, classify(suite, nodeid, t.message),
                                          known.get(nodeid, "")))
        elif t.outcome == "passed":
            differences.append(Difference(nodeid, "gained", d, t))
        else:
            differences.append(Difference(nodeid, "changed", d, t))
    return Comparison(suite, direct, tunnel, differences)
