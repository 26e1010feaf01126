"""Down-with-backoff for one dependency (Redis, the database's request-path reads).

Once a dependency failed, nobody waits on it again until its backoff has passed: callers read ``down``
(one attribute) and fall back at once. When the backoff is over, exactly one caller gets to probe
(``may_probe``); its success ends the outage, its failure doubles the backoff, up to ``longest``.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("relaygate")

FIRST_BACKOFF = 0.25  # seconds before the first probe after a failure


class Outage:
    """Whether ``name`` is down, and when it may be asked again."""

    __slots__ = ("name", "longest", "down", "since", "retry_at", "backoff", "probing", "failures")

    def __init__(self, name: str, longest: float = 5.0) -> None:
        self.name = name
        self.longest = longest
        self.down = False
        self.since = 0.0  # monotonic time the outage began
        self.retry_at = 0.0  # monotonic time the next probe may go out
        self.backoff = min(FIRST_BACKOFF, longest)
        self.probing = False
        self.failures = 0  # outages seen (for /health and tests)

    def failed(self, error: BaseException | str) -> None:
        """The dependency failed or timed out: fall back at once, and ask again after the backoff (doubled
        when it was a probe that failed; calls that were already waiting when it went down change nothing)."""
        now = time.monotonic()
        if not self.down:
            why = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
            self.down, self.since, self.failures = True, now, self.failures + 1
            self.backoff = min(FIRST_BACKOFF, self.longest)
            self.retry_at = now + self.backoff
            log.warning("%s is unreachable (%s); falling back until it answers again", self.name, why)
        elif self.probing:
            self.backoff = min(self.backoff * 2, self.longest)
            self.retry_at = now + self.backoff
        self.probing = False

    def recovered(self) -> None:
        if self.down:
            log.warning("%s answers again after %.1f s", self.name, time.monotonic() - self.since)
        self.down = False
        self.probing = False

    def may_probe(self) -> bool:
        """While down: True for the one caller that should try the dependency now (backoff over, no probe
        in flight); it must then call ``failed`` or ``recovered``."""
        if self.probing or time.monotonic() < self.retry_at:
            return False
        self.probing = True
        return True

    def retry_in(self) -> float:
        """Seconds until the next probe (for retry-after)."""
        return max(0.0, self.retry_at - time.monotonic())
