"""A deployment: one configured upstream for a model, its provider adapter and its live statistics."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from relaygate.config import DeploymentConfig

if TYPE_CHECKING:
    from relaygate.providers.base import Provider
    from relaygate.routing.breaker import Breaker


SUCCESS_ALPHA = 0.05
BASELINE_ALPHA = 0.01  # the latency baseline the health score compares with follows ~100 calls


class MinuteCounter:
    """Events in the last minute, estimated from this and the previous fixed minute (O(1), no list)."""

    __slots__ = ("_minute", "_current", "_previous")

    def __init__(self) -> None:
        self._minute = 0
        self._current = 0.0
        self._previous = 0.0

    def _roll(self, now: float) -> int:
        minute = int(now // 60)
        if minute != self._minute:
            self._previous = self._current if minute == self._minute + 1 else 0.0
            self._current = 0.0
            self._minute = minute
        return minute

    def add(self, n: float, now: float) -> None:
        self._roll(now)
        self._current += n

    def value(self, now: float) -> float:
        self._roll(now)
        into = (now % 60) / 60
        return self._current + self._previous * (1 - into)


@dataclass(slots=True)
class DeploymentStats:
    """Live figures the routing strategies read; updated after every attempt."""

    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    latency_ewma: float | None = None  # seconds, whole call (non-stream) or time to first token (stream)
    latency_baseline: float | None = None  # the same, averaged over many more calls (the health score's yardstick)
    success_ewma: float = 1.0  # recent success rate (1 = every recent call succeeded)
    cooling_until: float = 0.0  # monotonic time before which the upstream asked us to wait (429 retry-after)
    healthy: bool = True  # False while active health checks fail
    probe_failures: int = 0
    probe_successes: int = 0
    last_probe_error: str | None = None
    last_probe_at: float | None = None  # wall-clock time
    rpm: MinuteCounter | None = None  # only kept when the deployment has an rpm/tpm limit
    tpm: MinuteCounter | None = None
    # calls waiting for one of its max_parallel slots (routing/router.py: wait_for_slot), woken one per slot freed
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)

    def release(self) -> None:
        """A call in flight ended: its slot goes to the first call still waiting for one."""
        self.in_flight -= 1
        waiters = self.waiters
        while waiters:
            w = waiters.popleft()
            if not w.done():
                w.set_result(None)
                return

    def record(self, ok: bool, latency: float | None, alpha: float = 0.2) -> None:
        self.requests += 1
        if not ok:
            self.failures += 1
        # success is a noisier signal than latency: average it over more calls (~20)
        self.success_ewma += SUCCESS_ALPHA * ((1.0 if ok else 0.0) - self.success_ewma)
        if latency is not None:
            prev = self.latency_ewma
            self.latency_ewma = latency if prev is None else prev + alpha * (latency - prev)
            base = self.latency_baseline
            self.latency_baseline = latency if base is None else base + BASELINE_ALPHA * (latency - base)


@dataclass(slots=True, eq=False)
class Deployment:
    """One upstream that can serve ``model_name``."""

    name: str
    model_name: str  # the client-facing model name
    config: DeploymentConfig
    provider: Provider
    stats: DeploymentStats = field(default_factory=DeploymentStats)
    breaker: Breaker | None = None  # None when the model's breakers are off
    limited: bool = False  # has a max_parallel, rpm or tpm limit (checked before choosing it)
    provider_type: str = field(init=False, default="")  # the config's provider name (a plain read, not pydantic's)
    upstream: str = field(init=False, default="")  # the config's model (``*``: the client's), read on every call

    def __post_init__(self) -> None:
        c = self.config
        self.provider_type = c.provider
        self.upstream = c.model
        self.limited = c.max_parallel is not None or c.rpm is not None or c.tpm is not None
        if self.config.rpm is not None:
            self.stats.rpm = MinuteCounter()
        if self.config.tpm is not None:
            self.stats.tpm = MinuteCounter()

    def upstream_model(self, asked: str) -> str:
        """The model name to send upstream: the configured one, or the client's for a ``*`` wildcard."""
        upstream = self.upstream
        return asked if upstream == "*" else upstream

    def full(self) -> bool:
        """True when every max_parallel slot is taken (a wait for one can end; rpm and tpm are minutes)."""
        mp = self.config.max_parallel
        return mp is not None and self.stats.in_flight >= mp

    def at_capacity(self, now: float) -> bool:
        """True when the configured concurrency, rpm or tpm limit leaves no room for another call."""
        c = self.config
        s = self.stats
        if c.max_parallel is not None and s.in_flight >= c.max_parallel:
            return True
        if s.rpm is not None and c.rpm is not None and s.rpm.value(now) >= c.rpm:
            return True
        return s.tpm is not None and c.tpm is not None and s.tpm.value(now) >= c.tpm
