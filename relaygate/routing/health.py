"""Active health checks (a probe per deployment on an interval) and the per-deployment health report."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from relaygate.config import Config, HealthCheckConfig
from relaygate.core.errors import GatewayError
from relaygate.routing.breaker import CLOSED, HALF_OPEN
from relaygate.routing.deployment import Deployment

log = logging.getLogger("relaygate.health")


def health_checks(config: Config, deployments: dict[str, list[Deployment]]) -> list[tuple[Deployment, HealthCheckConfig]]:
    """Every deployment with an enabled health check (its own, else its model's)."""
    out = []
    for m in config.models:
        if m.select is not None:  # its deployments are other models' (checked as theirs)
            continue
        for d in deployments.get(m.name, []):
            hc = d.config.health_check or m.health_check
            if hc is not None and hc.enabled:
                out.append((d, hc))
    return out


async def probe_once(dep: Deployment, hc: HealthCheckConfig) -> None:
    """Probe one deployment (bounded by ``hc.timeout``) and move it in or out of the rotation."""
    s = dep.stats
    try:
        # the deadline bounds the probe's upstream requests; wait_for, whatever else it waits on (a token)
        await asyncio.wait_for(dep.provider.check(time.monotonic() + hc.timeout), hc.timeout)
        error = None
    except TimeoutError:
        error = f"probe timed out after {hc.timeout:g} s"
    except GatewayError as e:
        error = e.message
    except Exception as e:  # a probe bug must not stop the checker; the deployment counts as unhealthy
        error = f"probe failed ({type(e).__name__})"
    s.last_probe_at = time.time()
    s.last_probe_error = error
    if error is None:
        s.probe_failures = 0
        s.probe_successes += 1
        if not s.healthy and s.probe_successes >= hc.healthy_after:
            s.healthy = True
            log.info("deployment %s is healthy again", dep.name)
    else:
        s.probe_successes = 0
        s.probe_failures += 1
        if s.healthy and s.probe_failures >= hc.unhealthy_after:
            s.healthy = False
            log.warning("deployment %s failed %d health checks: %s", dep.name, s.probe_failures, error)


async def run_checks(dep: Deployment, hc: HealthCheckConfig) -> None:
    """Probe ``dep`` every ``hc.interval`` seconds until cancelled."""
    while True:
        await probe_once(dep, hc)
        await asyncio.sleep(hc.interval)


class HealthChecker:
    """One background task per checked deployment; started with the gateway, cancelled when it closes."""

    def __init__(self, checks: list[tuple[Deployment, HealthCheckConfig]]) -> None:
        self.checks = checks
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [asyncio.ensure_future(run_checks(d, hc)) for d, hc in self.checks]

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=2.0)
        self.tasks = []


SLOW_RATIO = 1.5  # latency up to this multiple of the deployment's own baseline costs no score
MIN_LATENCY_FACTOR = 0.5  # however slow, latency alone at most halves the score
MIN_BASELINE = 0.05  # s: below this every latency is one speed (a 3 ms answer turning 9 ms is scheduling noise)


def score_parts(dep: Deployment, breaker_state: int) -> dict[str, float]:
    """The health score's factors, each 0…1: recent success rate, latency against the deployment's own
    baseline, breaker (closed 1, half-open 0.5, open 0), active health check (failing: 0)."""
    s = dep.stats
    latency = 1.0
    if s.latency_ewma is not None and s.latency_baseline:
        ratio = s.latency_ewma / max(s.latency_baseline, MIN_BASELINE)
        if ratio > SLOW_RATIO:
            latency = max(MIN_LATENCY_FACTOR, SLOW_RATIO / ratio)
    breaker = 1.0 if breaker_state == CLOSED else 0.5 if breaker_state == HALF_OPEN else 0.0
    return {"success": round(s.success_ewma, 4), "latency": round(latency, 4), "breaker": breaker,
            "health_check": 1.0 if s.healthy else 0.0}


def health_score(parts: dict[str, float]) -> int:
    """0 (do not send) … 100 (every recent call succeeded at its usual speed): the product of the parts."""
    return round(100 * parts["success"] * parts["latency"] * parts["breaker"] * parts["health_check"])


def deployment_score(dep: Deployment) -> int:
    """The deployment's score from its last known breaker state (no await: for metrics and alerts)."""
    return health_score(score_parts(dep, dep.breaker.state if dep.breaker is not None else CLOSED))


DEGRADED_BELOW = 50  # a deployment scoring below this makes the gateway "degraded"


def overall(models: dict[str, list[Deployment]]) -> tuple[str, int]:
    """The gateway's status and score: the score is the mean over models of each model's best deployment
    (what a caller of that model can expect); "unhealthy" when no model has a deployment above 0,
    "degraded" when any deployment is below ``DEGRADED_BELOW``, else "healthy"."""
    best: list[int] = []
    low = False
    for deps in models.values():
        scores = [deployment_score(d) for d in deps]
        if scores:
            best.append(max(scores))
            low = low or min(scores) < DEGRADED_BELOW
    if not best:
        return "healthy", 100
    score = round(sum(best) / len(best))
    if max(best) == 0:
        return "unhealthy", score
    return ("degraded" if low else "healthy"), score


async def deployment_report(dep: Deployment, now: float) -> dict[str, Any]:
    """One deployment's entry in ``GET /health/providers``."""
    s = dep.stats
    breaker = await dep.breaker.snapshot() if dep.breaker is not None else {"state": "disabled"}
    bstate = dep.breaker.state if dep.breaker is not None else CLOSED
    if not s.healthy:
        state = "unhealthy"
    elif bstate != CLOSED:
        state = "open" if breaker["state"] == "open" else "recovering"
    elif dep.limited and dep.at_capacity(now):
        state = "at_capacity"
    elif s.cooling_until > now:
        state = "rate_limited"
    else:
        state = "healthy"
    out: dict[str, Any] = {
        "deployment": dep.name, "model": dep.model_name, "provider": dep.provider_type, "state": state,
        "breaker": breaker,
        "latency_ms": round(s.latency_ewma * 1000, 2) if s.latency_ewma is not None else None,
        "baseline_latency_ms": round(s.latency_baseline * 1000, 2) if s.latency_baseline is not None else None,
        "error_rate": round(1.0 - s.success_ewma, 4), "in_flight": s.in_flight, "requests": s.requests,
        "failures": s.failures,
    }
    parts = score_parts(dep, bstate)
    out["score"] = health_score(parts)
    out["score_parts"] = parts
    if s.last_probe_at is not None:
        out["health_check"] = {"healthy": s.healthy, "last_probe_at": s.last_probe_at,
                               "last_error": s.last_probe_error}
    if s.cooling_until > now:
        out["retry_after"] = round(s.cooling_until - now, 3)
    return out
