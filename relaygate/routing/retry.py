"""Retry policy: which error classes are retried and how long to wait before repeating a deployment."""

from __future__ import annotations

import random

from relaygate.config import RetryConfig
from relaygate.core.errors import GatewayError


class RetryPolicy:
    """A model's retry settings. Moving on to an untried deployment is immediate; repeating one waits
    an exponential backoff with jitter, or the upstream's retry-after when that is longer."""

    __slots__ = ("config", "attempts", "on", "rng")

    def __init__(self, config: RetryConfig, rng: random.Random) -> None:
        self.config = config
        self.attempts = config.attempts  # None: each deployment of the model once
        self.on = frozenset(config.on)
        self.rng = rng

    def retries(self, err: GatewayError) -> bool:
        """Is another attempt allowed after this error? (only transient classes; see config.RETRYABLE_KINDS)"""
        return err.retryable and err.kind in self.on

    def backoff(self, repeat: int) -> float:
        """Seconds before the ``repeat``-th repeat (0-based) of a deployment: doubling, capped, jittered."""
        c = self.config
        base = min(c.max_backoff, c.backoff * (1 << min(repeat, 30)))
        return base * (1.0 - c.jitter * self.rng.random())

    def wait(self, repeat: int, cooling_for: float) -> float | None:
        """The wait before a repeat, honouring retry-after; None when retry-after is longer than allowed."""
        if cooling_for > self.config.max_retry_after:
            return None
        return max(self.backoff(repeat), cooling_for)
