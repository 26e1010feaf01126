"""How a model chooses among its available deployments: one small class per ``strategy`` in config.

A strategy sees only deployments that may take a call now (healthy, breaker not open, under their
rpm/tpm/concurrency limits, not yet tried by this call) and returns one of them. State a strategy keeps
(a round-robin position, a random generator) belongs to its model's instance, never to the module.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import assert_never

from relaygate.config import StrategyName
from relaygate.routing.breaker import CLOSED
from relaygate.routing.deployment import Deployment
from relaygate.routing.health import health_score, score_parts

EXPLORE = 0.05  # share of calls least_latency/adaptive send elsewhere, to keep their view of the others fresh
PriceFn = Callable[[Deployment], float | None]  # USD per (input + output) token; None: unknown (Pricing.unit_price)


class Strategy:
    """Chooses one of ``cands`` (never empty)."""

    needs_ttft = False  # True when the strategy learns from time to first token of streams

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._next = 0

    def choose(self, cands: list[Deployment]) -> Deployment:
        raise NotImplementedError

    def _explore(self, best: Deployment, cands: list[Deployment]) -> Deployment:
        """``best``, but for ``EXPLORE`` of the calls another candidate, at random (to keep measuring it)."""
        if len(cands) > 1 and self.rng.random() < EXPLORE:
            return self.rng.choice([d for d in cands if d is not best])
        return best

    def _rotate(self, cands: list[Deployment]) -> Deployment:
        n = self._next
        self._next = n + 1
        return cands[n % len(cands)]


class RoundRobin(Strategy):
    """Each deployment in turn."""


    def choose(self, cands: list[Deployment]) -> Deployment:
        return self._rotate(cands)


class Weighted(Strategy):
    """At random, in proportion to ``weight`` (all weights 0: uniformly)."""


    def choose(self, cands: list[Deployment]) -> Deployment:
        total = sum(d.config.weight for d in cands)
        if total <= 0:
            return self.rng.choice(cands)
        x = self.rng.random() * total
        for d in cands:
            x -= d.config.weight
            if x < 0:
                return d
        return cands[-1]


class LeastConnections(Strategy):
    """The fewest calls in flight; ties in turn."""


    def choose(self, cands: list[Deployment]) -> Deployment:
        low = min(d.stats.in_flight for d in cands)
        return self._rotate([d for d in cands if d.stats.in_flight == low])


def _latency_key(dep: Deployment) -> tuple[float, int]:
    """Lowest first. An unmeasured deployment gets one call at a time (not a whole burst while its first
    answers are still out); equals go to the one with fewer calls in flight."""
    s = dep.stats
    latency = s.latency_ewma
    if latency is None:
        latency = 0.0 if s.in_flight == 0 else math.inf
    return latency, s.in_flight


class LeastLatency(Strategy):
    """The lowest moving average of latency (time to first token for streams); unmeasured ones first."""

    needs_ttft = True

    def choose(self, cands: list[Deployment]) -> Deployment:
        return self._explore(min(cands, key=_latency_key), cands)


class Cost(Strategy):
    """The cheapest price per token; deployments without a price after every priced one; ties in turn."""


    def __init__(self, rng: random.Random, price_of: PriceFn) -> None:
        super().__init__(rng)
        self.price_of = price_of

    def choose(self, cands: list[Deployment]) -> Deployment:
        prices = [self.price_of(d) for d in cands]
        known = [p for p in prices if p is not None]
        if not known:
            return self._rotate(cands)
        low = min(known)
        return self._rotate([d for d, p in zip(cands, prices, strict=True) if p == low])


def adaptive_score(dep: Deployment) -> float:
    """The deployment's health score (0…1 here) times success³, over its recent latency (unmeasured: very
    high, to try it).

    The health score (routing/health.py) brings in what latency alone does not: a deployment turning slow
    against its own baseline, a half-open breaker, a failing health check. Success counts four times in all
    (once in the score): 90% success costs a third of the score, 70% three quarters, since each failure
    costs the caller a whole extra attempt."""
    s = dep.stats
    health = health_score(score_parts(dep, dep.breaker.state if dep.breaker is not None else CLOSED)) / 100
    return health * s.success_ewma ** 3 / max(s.latency_ewma or 0.0, 0.001)


def _adaptive_key(dep: Deployment) -> tuple[float, int]:
    """Highest first; like ``_latency_key``, an unmeasured deployment gets one call at a time."""
    s = dep.stats
    if s.latency_ewma is None and s.in_flight:
        return -math.inf, -s.in_flight
    return adaptive_score(dep), -s.in_flight


class Adaptive(Strategy):
    """The best ``adaptive_score`` (health score × success³ / latency); ``EXPLORE`` of the calls go to another, at random."""

    needs_ttft = True

    def choose(self, cands: list[Deployment]) -> Deployment:
        return self._explore(max(cands, key=_adaptive_key), cands)


class Priority(Strategy):
    """The lowest ``priority`` number first (config order among equals); the next only when it cannot serve."""


    def choose(self, cands: list[Deployment]) -> Deployment:
        return min(cands, key=lambda d: d.config.priority)  # min() keeps the first of equals


def new_strategy(name: StrategyName, rng: random.Random, price_of: PriceFn) -> Strategy:
    """The strategy a model's ``strategy`` names (mypy checks that every name has one)."""
    match name:
        case "round_robin":
            return RoundRobin(rng)
        case "weighted":
            return Weighted(rng)
        case "least_connections":
            return LeastConnections(rng)
        case "least_latency":
            return LeastLatency(rng)
        case "cost":
            return Cost(rng, price_of)
        case "adaptive":
            return Adaptive(rng)
        case "priority":
            return Priority(rng)
        case _:
            assert_never(name)
