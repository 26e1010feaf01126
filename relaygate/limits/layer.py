"""The limits layer: reserve before the call (rate, parallel, budget), settle from real usage after it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from relaygate.core.call import Call, Handler, Reply
from relaygate.limits.memory import Grant, MemoryLimiter
from relaygate.providers.base import RATE_LIMIT_HEADERS


class LimitLayer:
    """Wraps the handler below auth; a no-op for callers without limits (the master key, open gateways)."""

    def __init__(self, next_handler: Handler, limiter: Callable[[], Any],
                 estimate: Callable[[Call, bool, bool], tuple[int, int]],
                 cost: Callable[[Call, Reply | None], int], tasks: set[asyncio.Future[Any]]) -> None:
        self.next = next_handler
        self.limiter = limiter  # read at call time: the backend is chosen when the gateway starts
        self.estimate = estimate
        self.cost = cost
        self.tasks = tasks  # settlements in flight (Redis), awaited on shutdown

    async def __call__(self, call: Call) -> Reply:
        key = call.key
        scopes = key.limited if key is not None else ()
        if not scopes:
            return await self.next(call)
        tokens, cost = self.estimate(call, key.wants_tokens, key.wants_cost)
        limiter = self.limiter()
        memory = type(limiter) is MemoryLimiter
        grant = limiter.try_acquire(scopes, tokens, cost) if memory else None  # in-process: no await at all
        if grant is None:
            grant = await limiter.acquire(scopes, tokens, cost)
        if grant is None:  # the shared store is down; the call goes through unlimited
            return await self.next(call)
        try:
            reply = await self.next(call)
        except BaseException:
            self._settle(limiter, grant, 0, 0)
            raise
        if grant.headers:  # this key's limits, not the upstream's (encoded: sent as they are)
            if reply.headers:
                for name in RATE_LIMIT_HEADERS:
                    reply.headers.pop(name, None)
            reply.raw_headers = grant.headers

        def done(r: Reply, error: BaseException | None) -> None:
            usage = r.usage
            used = usage.prompt_tokens + usage.completion_tokens if usage is not None and usage.known else 0
            if memory:
                limiter.settle_now(grant, used, self.cost(call, r))
            else:
                self._settle(limiter, grant, used, self.cost(call, r))

        reply.on_done(done)
        return reply

    def _settle(self, limiter: Any, grant: Grant, tokens: int, cost: int) -> None:
        if isinstance(limiter, MemoryLimiter):
            limiter.settle_now(grant, tokens, cost)
            return
        fut = limiter.settle_soon(grant, tokens, cost)  # shared by the settlements of one loop turn
        if fut not in self.tasks:
            self.tasks.add(fut)
            fut.add_done_callback(self.tasks.discard)
