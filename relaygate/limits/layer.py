"""The limits layer: reserve before the call (rate, parallel, budget), settle from real usage after it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from relaygate.auth.keys import Scope
from relaygate.core.call import Call, Handler, Reply
from relaygate.core.pricing import Pricing
from relaygate.limits.base import Grant, Limiter
from relaygate.providers.base import RATE_LIMIT_HEADERS

if TYPE_CHECKING:
    from relaygate.observability.tracing import CallTrace


class LimitLayer:
    """Wraps the handler below auth; a no-op for callers without limits (the master key, open gateways)."""

    def __init__(self, next_handler: Handler, limiter: Limiter, pricing: Pricing) -> None:
        self.next = next_handler
        self.limiter = limiter
        self.pricing = pricing

    async def __call__(self, call: Call) -> Reply:
        key = call.key
        if key is None or not key.limited:
            return await self.next(call)
        scopes = key.limited
        tokens, cost = self.pricing.estimate(call, key.wants_tokens, key.wants_cost)
        limiter = self.limiter
        trace = call.trace
        if trace is not None:
            grant = await traced_acquire(trace, limiter, scopes, tokens, cost)
        else:
            quick = limiter.try_acquire(scopes, tokens, cost)  # in-process: no await at all
            grant = quick if quick is not None else await limiter.acquire(scopes, tokens, cost)
        try:
            reply = await self.next(call)
        except BaseException:
            limiter.settle(grant, 0, 0)
            raise
        if grant.headers:  # this key's limits, not the upstream's (encoded: sent as they are)
            if reply.headers:
                for name in RATE_LIMIT_HEADERS:
                    reply.headers.pop(name, None)
            reply.raw_headers = grant.headers
        settled = grant

        def done(r: Reply, error: BaseException | None) -> None:
            if call.cache_hit:  # counted against rpm (acquired above), not against tokens or budgets
                limiter.settle(settled, 0, 0)
                return
            usage = r.usage
            used = usage.prompt_tokens + usage.completion_tokens if usage is not None and usage.known else 0
            limiter.settle(settled, used, self.pricing.cost(call, r))

        reply.on_done(done)
        return reply


async def traced_acquire(trace: CallTrace, limiter: Limiter, scopes: tuple[Scope, ...], tokens: int,
                         cost: int) -> Grant:
    """``acquire`` inside a ``relaygate.limits`` span (tracing on): its outcome, and the refusal's class."""
    span = trace.step("relaygate.limits")
    span.set_attribute("relaygate.limits.scopes", len(scopes))
    try:
        quick = limiter.try_acquire(scopes, tokens, cost)
        grant = quick if quick is not None else await limiter.acquire(scopes, tokens, cost)
    except BaseException as e:
        span.set_attribute("relaygate.limits.outcome", "refused")
        span.set_attribute("error.type", getattr(e, "kind", "internal"))
        span.end()
        raise
    span.set_attribute("relaygate.limits.outcome", "granted")
    span.end()
    return grant
