"""Per-address limits on secret-guessing endpoints, and their failures audited in bulk.

The join, bot join and invite/reset endpoints take a secret and nothing else, so a
guesser's only cost is a request. ``FailureLimiter`` counts failed attempts per client
address in a sliding window; past ``max_failures`` the address is refused
(``LimitExceeded`` with a retry-after in seconds) without the secret being looked at.
Successful attempts are never counted.

``FailureAudit`` keeps the audit log readable under a guesser: at most one failure event
per address per ``interval``, carrying in ``attempts`` how many refused attempts it
stands for (``throttled`` of them refused by the limit without a look at the secret).
The first failure of an address is emitted at once; later ones ride on the next event,
or on ``flush`` (the API calls it every few seconds and at shutdown), so a short burst
is never lost.

Both keep at most ``max_addresses`` addresses (the least recently failed are dropped
first), so a spray from many addresses cannot grow memory without bound.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from common.errors import LimitExceeded

Clock = Callable[[], datetime]

MAX_FAILURES = 10
WINDOW = timedelta(minutes=1)
AUDIT_INTERVAL = timedelta(minutes=1)
MAX_ADDRESSES = 10_000


def client_ip(remote: str) -> str:
    """The address part of ``host:port`` (``[v6]:port`` and bare addresses too)."""
    host, sep, port = remote.rpartition(":")
    if not sep or not port.isdigit():
        return remote
    return host.strip("[]")


class FailureLimiter:
    """At most ``max_failures`` failed attempts per address in any ``window``."""

    def __init__(
        self,
        clock: Clock,
        max_failures: int = MAX_FAILURES,
        window: timedelta = WINDOW,
        max_addresses: int = MAX_ADDRESSES,
    ) -> None:
        self.clock = clock
        self.max_failures = max_failures
        self.window = window
        self.max_addresses = max_addresses
        # address -> times of its latest failures (at most max_failures), least recent address first
        self._failures: OrderedDict[str, deque[datetime]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, ip: str) -> int:
        """Seconds until ``ip`` may try again (0: it may now)."""
        now = self.clock()
        with self._lock:
            times = self._failures.get(ip)
            if not times or len(times) < self.max_failures:
                return 0
            left = (times[0] + self.window - now).total_seconds()
        return max(1, math.ceil(left)) if left > 0 else 0

    def check(self, ip: str) -> None:
        """Refuse ``ip`` with LimitExceeded while it has used up its failures."""
        wait = self.retry_after(ip)
        if wait:
            raise LimitExceeded(f"too many failed attempts from this address; try again in {wait} s", retry_after=wait)

    def failed(self, ip: str) -> None:
        now = self.clock()
        with self._lock:
            times = self._failures.pop(ip, None)
            if times is None:
                times = deque(maxlen=self.max_failures)
            times.append(now)
            self._failures[ip] = times  # now the most recent
            while len(self._failures) > self.max_addresses:
                self._failures.popitem(last=False)

    def __len__(self) -> int:
        return len(self._failures)


@dataclass
class _Pending:
    last_emit: datetime
    attempts: int = 0
    throttled: int = 0
    fields: dict[str, Any] = field(default_factory=dict)


class FailureAudit:
    """One audit event per address per ``interval`` for a kind of failure, with a count."""

    def __init__(
        self,
        emit: Callable[[dict[str, Any]], None],
        clock: Clock,
        interval: timedelta = AUDIT_INTERVAL,
        max_addresses: int = MAX_ADDRESSES,
    ) -> None:
        self._emit = emit
        self.clock = clock
        self.interval = interval
        self.max_addresses = max_addresses
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, ip: str, fields: dict[str, Any], throttled: bool = False) -> None:
        """Note one refused attempt from ``ip``; ``fields`` describe the latest one."""
        now = self.clock()
        due: list[dict[str, Any]] = []
        with self._lock:
            state = self._pending.pop(ip, None)
            if state is None or now - state.last_emit >= self.interval:
                attempts = 1 + (state.attempts if state else 0)
                skipped = int(throttled) + (state.throttled if state else 0)
                due.append({**fields, "attempts": attempts, "throttled": skipped})
                state = _Pending(now)
            else:
                state.attempts += 1
                state.throttled += int(throttled)
                state.fields = fields
            self._pending[ip] = state
            while len(self._pending) > self.max_addresses:
                _ip, old = self._pending.popitem(last=False)
                if old.attempts:
                    due.append({**old.fields, "attempts": old.attempts, "throttled": old.throttled})
        for event_fields in due:
            self._emit(event_fields)

    def flush(self, force: bool = False) -> int:
        """Emit what waited at least ``interval`` (everything with ``force``); the number emitted."""
        now = self.clock()
        due: list[dict[str, Any]] = []
        with self._lock:
            for ip in list(self._pending):
                state = self._pending[ip]
                if not force and now - state.last_emit < self.interval:
                    continue
                if state.attempts:
                    due.append({**state.fields, "attempts": state.attempts, "throttled": state.throttled})
                    self._pending[ip] = _Pending(now)
                else:
                    del self._pending[ip]  # quiet for a whole interval: forget it
        for event_fields in due:
            self._emit(event_fields)
        return len(due)


class SecretGuard:
    """A limiter and an audit for one endpoint kind (join, bot join, invite links)."""

    def __init__(
        self,
        emit: Callable[[dict[str, Any]], None],
        clock: Clock,
        max_failures: int = MAX_FAILURES,
        window: timedelta = WINDOW,
    ) -> None:
        self.limiter = FailureLimiter(clock, max_failures, window)
        self.audit = FailureAudit(emit, clock)

    def check(self, remote: str, fields: dict[str, Any]) -> None:
        """Refuse ``remote`` (``host:port``) before its secret is looked at, if it failed too often."""
        ip = client_ip(remote)
        try:
            self.limiter.check(ip)
        except LimitExceeded as exc:
            self.audit.record(ip, {**fields, "error": exc.message}, throttled=True)
            raise

    def failed(self, remote: str, fields: dict[str, Any]) -> None:
        """Count a wrong secret from ``remote`` and audit it (coalesced)."""
        ip = client_ip(remote)
        self.limiter.failed(ip)
        self.audit.record(ip, fields)

    def flush(self, force: bool = False) -> int:
        return self.audit.flush(force)
