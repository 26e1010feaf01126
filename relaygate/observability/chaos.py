"""Fault injection for drills: rules that make calls to an upstream fail on purpose, at the upstream boundary.

Off unless ``chaos.enabled``: then (and only then) every deployment's route handlers are wrapped, so the router,
its retries, fallbacks and breakers see an injected fault exactly as they would see the real one, and nothing
else on the request path changes. Rules come from the config or from ``/admin/chaos`` (master key), never from
a request; each is scoped to a model, deployment or route, with a probability. Every injected fault is counted
(``relaygate_faults_injected_total``), named in the error's message (and so in the request log row), on the
answer (``x-relaygate-fault``), in the access log and the trace.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from relaygate.config import ConfigError
from relaygate.config.observability import ChaosConfig, ChaosRule
from relaygate.core.aiter import aclose
from relaygate.core.call import Call, Handler, Reply
from relaygate.core.errors import GatewayError, RateLimited, Unavailable, UpstreamTimeout, from_status

if TYPE_CHECKING:
    from relaygate.observability.chaos_shared import SharedRules
    from relaygate.observability.metrics import Metrics
    from relaygate.routing.deployment import Deployment

log = logging.getLogger("relaygate.chaos")

MAX_RULES = 100
FAULT_HEADER = "x-relaygate-fault"  # the rule that hit the call, on its answer


class Rule:
    """A rule and how many faults it injected."""

    __slots__ = ("config", "injected")

    def __init__(self, config: ChaosRule) -> None:
        self.config = config
        self.injected = 0

    def view(self) -> dict[str, Any]:
        return {**self.config.model_dump(), "injected": self.injected}


class Chaos:
    """The rules of one gateway and the wrapped handlers of its deployments."""

    def __init__(self, config: ChaosConfig, models: dict[str, list[Deployment]], metrics: Metrics | None) -> None:
        self.rng = random.Random(config.seed)
        self.models = models
        self.deployments = {d.name: d for deps in models.values() for d in deps}
        self.metrics = metrics
        self.rules: dict[str, Rule] = {}
        self.shared: SharedRules | None = None  # with Redis: changes reach every worker and instance
        errors = []
        for i, rule in enumerate(config.rules):
            try:
                self.add(rule)
            except ValueError as e:
                errors.append(f"chaos.rules[{i}]: {e}")
        if errors:
            raise ConfigError(errors)
        for dep in self.deployments.values():  # from the provider's own table: never a wrapper of a wrapper
            dep.provider.handlers.update({route: self._wrapped(dep, inner)
                                          for route, inner in dep.provider.own_handlers.items()})

    # -- the rules (config and /admin/chaos) ---------------------------------------------------------------

    def add(self, rule: ChaosRule) -> Rule:
        if rule.name in self.rules:
            raise ValueError(f"a rule named {rule.name!r} exists already")
        if len(self.rules) >= MAX_RULES:
            raise ValueError(f"at most {MAX_RULES} chaos rules")
        if rule.model is not None and rule.model not in self.models:
            raise ValueError(f"model: no model named {rule.model!r}")
        if rule.deployment is not None and rule.deployment not in self.deployments:
            raise ValueError(f"deployment: no deployment named {rule.deployment!r}")
        added = self.rules[rule.name] = Rule(rule)
        log.warning("chaos rule %r is in place: %s into %s", rule.name, rule.fault, _scope(rule))
        return added

    def switch(self, name: str, enabled: bool) -> Rule:
        rule = self.rules[name]
        rule.config = rule.config.model_copy(update={"enabled": enabled})
        log.warning("chaos rule %r switched %s", name, "on" if enabled else "off")
        return rule

    def remove(self, name: str) -> None:
        del self.rules[name]
        log.warning("chaos rule %r removed", name)

    def replace(self, rules: list[ChaosRule]) -> None:
        """Take a whole rule set (another worker's or instance's change); counts of the same names carry on."""
        old = self.rules
        new: dict[str, Rule] = {}
        for config in rules[:MAX_RULES]:
            if (config.model is not None and config.model not in self.models) \
                    or (config.deployment is not None and config.deployment not in self.deployments):
                log.error("chaos rule %r left out: its model or deployment is not in this config", config.name)
                continue
            rule = new[config.name] = Rule(config)
            if config.name in old:
                rule.injected = old[config.name].injected
        self.rules = new  # one assignment: a call matching now sees the old set or the new one, whole

    # -- the request path ----------------------------------------------------------------------------------

    def _wrapped(self, dep: Deployment, inner: Handler) -> Handler:
        async def handle(call: Call) -> Reply:
            rule = self._match(dep, call) if self.rules else None
            if rule is None:
                return await inner(call)
            return await self._inject(rule, dep, call, inner)

        return handle

    def _match(self, dep: Deployment, call: Call) -> Rule | None:
        for rule in self.rules.values():
            r = rule.config
            if not r.enabled or (r.model is not None and r.model != dep.model_name) \
                    or (r.deployment is not None and r.deployment != dep.name) \
                    or (r.route is not None and r.route != call.route):
                continue
            if r.probability >= 1.0 or self.rng.random() < r.probability:
                return rule
        return None

    async def _inject(self, rule: Rule, dep: Deployment, call: Call, inner: Handler) -> Reply:
        r = rule.config
        rule.injected += 1
        call.faults += (r.name,)
        if self.metrics is not None:
            self.metrics.fault(dep, r.fault)
        tag = f"(fault injected by chaos rule {r.name!r})"
        try:
            if r.fault == "latency":
                await asyncio.sleep(_bounded(r.latency, call))
                reply = await inner(call)
            elif r.fault == "stream_cut":
                reply = await inner(call)
                if reply.stream is not None:
                    reply.stream = _cut(reply.stream, r.after_chunks, f"upstream {dep.provider_type} stream broke {tag}")
            elif r.fault == "error":
                raise from_status(r.status, f"upstream {dep.provider_type} answered HTTP {r.status} {tag}")
            elif r.fault == "rate_limit":
                raise RateLimited(f"upstream {dep.provider_type} rate limit {tag}", retry_after=r.retry_after)
            elif r.fault == "timeout":
                await asyncio.sleep(_bounded(dep.config.timeout or 600.0, call))
                raise UpstreamTimeout(f"upstream {dep.provider_type} timed out {tag}")
            else:  # drop
                raise Unavailable(f"upstream {dep.provider_type} is unreachable (connection dropped) {tag}",
                                  status=502)
        except GatewayError as e:
            e.headers[FAULT_HEADER] = r.name
            raise
        reply.headers[FAULT_HEADER] = r.name
        return reply

    def view(self) -> dict[str, Any]:
        return {"enabled": True, "rules": [r.view() for r in self.rules.values()]}


def unwrap(models: dict[str, list[Deployment]]) -> None:
    """Give every deployment its provider's own handlers back (a gateway without chaos may take over
    deployments a reloaded one had wrapped)."""
    for deps in models.values():
        for dep in deps:
            dep.provider.handlers.update(dep.provider.own_handlers)


def _bounded(seconds: float, call: Call) -> float:
    """``seconds``, cut at the call's deadline."""
    if call.deadline:
        return max(0.0, min(seconds, call.deadline - time.monotonic()))
    return seconds


async def _cut(stream: AsyncIterator[bytes], after: int, message: str) -> AsyncIterator[bytes]:
    """Relay ``after`` chunks, then break as an upstream connection that drops mid-stream does."""
    try:
        n = 0
        async for chunk in stream:
            if n >= after:
                raise Unavailable(message, status=502)
            n += 1
            yield chunk
    finally:
        await aclose(stream)


def _scope(rule: ChaosRule) -> str:
    parts = [f"{k} {v!r}" for k, v in (("model", rule.model), ("deployment", rule.deployment), ("route", rule.route))
             if v is not None]
    return ", ".join(parts) + f" (probability {rule.probability:g})"
