"""The limits layer: reserve before the call (rate, parallel, budget), settle from real usage after it.

A call of a key, team or user with a budget may only produce what the budget can pay for: without a
``max_tokens`` the reservation covers the most output its model may answer (core/pricing.py), and a call
the remaining budget cannot pay in full is held to the output it can pay (its ``max_tokens`` lowered, the
client told by ``x-relaygate-output-cap``) rather than let the upstream overspend it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from relaygate.auth.principal import Scope
from relaygate.core.call import Call, Handler, Reply
from relaygate.core.errors import BudgetExceeded
from relaygate.core.pricing import Pricing
from relaygate.limits.base import Grant, Limiter
from relaygate.providers.base import RATE_LIMIT_HEADERS

if TYPE_CHECKING:
    from relaygate.observability.tracing import CallTrace

OUTPUT_CAP_HEADER = "x-relaygate-output-cap"  # the output tokens the gateway held the answer to (its budget)


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
        tokens, cost, held = self.pricing.estimate(call, key.wants_tokens, key.wants_cost)
        limiter = self.limiter
        trace = call.trace
        try:
            if trace is not None:
                grant = await traced_acquire(trace, limiter, scopes, tokens, cost)
            else:
                quick = limiter.try_acquire(scopes, tokens, cost)  # in-process: no await at all
                grant = quick if quick is not None else await limiter.acquire(scopes, tokens, cost)
        except BudgetExceeded as refused:
            grant, held = await self._within_budget(call, scopes, refused)
        if held and not hold_output(call, held):
            held = 0  # the client's own cap was lower already
        try:
            reply = await self.next(call)
        except BaseException:
            limiter.settle(grant, 0, 0)
            raise
        if grant.head:  # this key's limits, not the upstream's (in wire form: written as they are)
            if reply.headers:
                for name in RATE_LIMIT_HEADERS:
                    reply.headers.pop(name, None)
            reply.raw_headers += grant.head  # after the lines of the layers below (the cache's)
        if held:
            reply.headers[OUTPUT_CAP_HEADER] = str(held)
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

    async def _within_budget(self, call: Call, scopes: tuple[Scope, ...],
                             refused: BudgetExceeded) -> tuple[Grant, int]:
        """A call its budget cannot pay in full: granted with the largest output what is left pays for (a
        scope refusing again, with less left, is asked again: at most once per scope), else the refusal."""
        for _ in scopes:
            left = refused.left_nano
            fit = self.pricing.affordable(call, left) if left is not None else None
            if fit is None:
                raise refused
            tokens, cost, held = fit
            try:
                return await self.limiter.acquire(scopes, tokens, cost), held
            except BudgetExceeded as again:
                refused = again
        raise refused


def hold_output(call: Call, cap: int) -> bool:
    """Hold the call's answer to ``cap`` output tokens: the client's own caps lowered to it (the chat body's
    and a relayed Messages body's), or ``call.output_cap`` set for the provider to send in its own field
    when the client set none. False when the client's cap was no higher already."""
    given = lowered = False
    own = call.untranslated
    if own is not None:  # the fast path: the client's own body is all there is
        given, lowered = own.cap_output(cap)
        if not given or lowered:
            call.output_cap = cap
            return True
        return False
    body = call.body
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if type(value) is int:
            given = True
            if value > cap:
                body[name] = cap
                lowered = True
    for native, name in ((call.anthropic_request, "max_tokens"), (call.responses_request, "max_output_tokens")):
        if native is not None:
            value = native.get(name)
            if type(value) is int:
                given = given or native is body  # a native Responses call's own body
                if value > cap:
                    native[name] = cap
                    lowered = lowered or native is body
    if call.native is not None:
        call.native.cap_output(cap)
    if not given or lowered:
        call.output_cap = cap
        return True
    return False


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
