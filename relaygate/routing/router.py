"""The innermost pipeline layer: find the model's deployments, choose one, call it; retry, fall back.

route = pick a deployment (strategy, among those healthy, under their limits, breaker admitting)
        -> attempt -> on a retryable error: another deployment (or the same after a backoff)
        -> on an error class the model's fallbacks name: the next fallback model, and so on,
        all within ``call.deadline``. A reply is returned as soon as an upstream accepted the call; what
        happens to a stream after that (a break after the first byte) is never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING

from relaygate.config import Config, ModelConfig
from relaygate.core.aiter import aclose
from relaygate.core.call import Call, Reply, Route
from relaygate.core.errors import (
    BadRequest,
    GatewayError,
    ModelNotFound,
    RateLimited,
    Unavailable,
    UpstreamTimeout,
)
from relaygate.routing.breaker import OPEN, starved
from relaygate.routing.deployment import Deployment
from relaygate.routing.fallback import Fallbacks
from relaygate.routing.retry import RetryPolicy
from relaygate.routing.strategies import PriceFn, Strategy, new_strategy
from relaygate.routing.voices import narrow_by_voice, voices_of

if TYPE_CHECKING:
    from relaygate.auth.principal import Principal

WILDCARD = "*"
MAX_FALLBACK_MODELS = 8  # fallback models one call may move through, however the rules chain


class ModelTable:
    """Client-facing model names and their deployments; resolves ``provider/model`` and wildcards."""

    def __init__(self, models: dict[str, list[Deployment]], provider_types: Iterable[str]) -> None:
        self.models = models
        self._provider_types = set(provider_types)

    def names(self) -> list[str]:
        return [n for n in self.models if n != WILDCARD]

    def listed(self, key: Principal | None) -> str:
        """The model names an error may show a caller: those its key may use (all on an open gateway)."""
        return ", ".join(n for n in self.names() if key is None or key.allows_model(n)) or "none"

    def resolve(self, call: Call) -> list[Deployment]:
        """The deployments that may serve the call (respecting an explicit provider)."""
        name, provider = call.model, call.provider
        deps = self.models.get(name)
        if deps is None and "/" in name:
            prefix, rest = name.split("/", 1)
            if prefix in self._provider_types:
                provider = provider or prefix
                if prefix != provider:
                    raise ModelNotFound(f"model {name!r} names provider {prefix!r} but provider {provider!r} "
                                        "was requested", param="model")
                name = rest
                deps = self.models.get(rest)
                call.model = rest
        if deps is None:
            deps = self.models.get(WILDCARD)
        if deps is None:
            raise ModelNotFound(f"The model {call.model!r} does not exist on this gateway. "
                                f"Available models: {self.listed(call.key)}.", param="model")
        if not deps:  # a model whose ``select`` matches no deployment now
            raise Unavailable(f"The model {name!r} selects its deployments by capability and none matches "
                              "now.", status=503, code="no_deployment_selected")
        if provider:
            deps = [d for d in deps if d.provider_type == provider]
            if not deps:
                raise ModelNotFound(f"The model {name!r} has no deployment on provider {provider!r}.",
                                    param="provider")
        call.provider = provider
        return deps


class ModelRoute:
    """How one model routes: its strategy, retry policy and fallbacks."""

    __slots__ = ("name", "deployments", "strategy", "retry", "fallbacks", "simple", "cooling_cap", "voiced",
                 "partly", "queue_timeout")

    def __init__(self, name: str, deployments: list[Deployment], config: ModelConfig, rng: random.Random,
                 price_of: PriceFn) -> None:
        self.name = name
        self.deployments = deployments
        self.strategy: Strategy = new_strategy(config.strategy, rng, price_of)
        self.retry = RetryPolicy(config.retry, rng)
        self.fallbacks = Fallbacks(config.fallbacks)
        # one attempt on a single deployment and nowhere else to go: the router's fast path applies
        self.simple = self.retry.attempts in (None, 1) and not self.fallbacks
        self.cooling_cap = config.retry.max_retry_after
        self.queue_timeout = config.queue_timeout
        # speech narrows by voice
        self.voiced = any(voices or mapped for voices, mapped in map(voices_of, deployments))
        # routes only some of the deployments serve (an embeddings call to a model on Anthropic and OpenAI)
        served = [d.provider.routes for d in deployments]
        self.partly = frozenset(r for r in Route
                                if any(r in s for s in served) and not all(r in s for s in served))


class Router:
    """Routes a call among a model's deployments, with retries and fallbacks (see the module docstring).
    ``price_of`` is what the ``cost`` strategy compares."""

    def __init__(self, table: ModelTable, config: Config, price_of: PriceFn, *,
                 rng: random.Random | None = None,
                 unpriced: Callable[[Deployment, str], bool] | None = None) -> None:
        self.table = table
        self.unpriced = unpriced  # whether a deployment has no known price for a model (budgets skip those)
        self.rng = rng or random.Random()
        self.price_of = price_of
        self.routes = {m.name: ModelRoute(m.name, table.models[m.name], m, self.rng, price_of)
                       for m in config.models}

    def rebuild(self, model: ModelConfig) -> None:
        """A model's route again, over its deployments as they are now (a ``select`` resolved anew)."""
        self.routes[model.name] = ModelRoute(model.name, self.table.models[model.name], model, self.rng,
                                             self.price_of)

    async def __call__(self, call: Call) -> Reply:
        deps = call.deployments or self.table.resolve(call)
        route = self.routes[deps[0].model_name]
        if route.voiced:
            deps = narrow_by_voice(call, deps)
        if call.route in route.partly:
            deps = serving(call.route, deps)
        try:
            if route.simple and len(deps) == 1:
                dep = deps[0]
                b = dep.breaker
                if (b is None or b.ready) and dep.stats.healthy and not dep.limited:
                    return await attempt(dep, call, route)
            return await self.route(call, route, deps)
        except GatewayError as e:
            # an error says where it came from too, like a reply does
            if call.deployment is not None:
                e.headers["x-relaygate-deployment"] = call.deployment.name
            e.headers["x-relaygate-attempts"] = str(call.attempts)
            raise

    async def route(self, call: Call, route: ModelRoute, deps: list[Deployment]) -> Reply:
        """The model's deployments, then its fallback models on the error classes they are configured for:
        transitively (a fallback model's own fallbacks first, then those of the models before it), each model
        at most once per call and at most ``MAX_FALLBACK_MODELS`` of them."""
        visited = {route.name}
        chain = [route]  # the models tried, whose fallback rules may still name one to try
        while True:
            try:
                return await self._try_model(call, route, deps)
            except GatewayError as e:
                err = e
            if call.deadline and time.monotonic() >= call.deadline:
                raise err
            found = self._fallback(call, chain, err.kind, visited) if len(chain) <= MAX_FALLBACK_MODELS else None
            if found is None:
                raise err
            route, deps = found
            chain.append(route)
            call.fallbacks += (route.name,)

    def _fallback(self, call: Call, chain: list[ModelRoute], kind: str,
                  visited: set[str]) -> tuple[ModelRoute, list[Deployment]] | None:
        """The next fallback model for an error class, and its deployments that can serve the call: from the
        rules of the model tried last, else of those before it. A model the caller's key may not use, or
        (for a caller with a budget) one without a known price, is passed over."""
        key = call.key
        for source in reversed(chain):
            while (nxt := source.fallbacks.next_model(kind, visited)) is not None:
                visited.add(nxt)
                route = self.routes.get(nxt)
                if route is None:
                    continue
                if key is not None and not self._may_use(key, call, route):
                    continue
                try:
                    deps = narrow_by_voice(call, route.deployments)
                except BadRequest:  # this one cannot speak the requested voice; a later one may
                    continue
                return route, serving(call.route, deps) if call.route in route.partly else deps
        return None

    def _may_use(self, key: Principal, call: Call, route: ModelRoute) -> bool:
        """Whether a fallback model is one the caller may be served by: allowed to its key, and priced if it
        has a budget (what the auth and limits layers check of the model the client asked for)."""
        if key.restricts_models and not key.allows_deployments(route.name, route.deployments, call.model):
            return False
        unpriced = self.unpriced
        return not (key.wants_cost and unpriced is not None
                    and any(unpriced(d, call.model if route.name == WILDCARD else route.name)
                            for d in route.deployments))

    async def _try_model(self, call: Call, route: ModelRoute, deps: list[Deployment]) -> Reply:
        """Up to ``retry.attempts`` attempts on this model's deployments (untried ones first)."""
        policy = route.retry
        tried: list[Deployment] = []
        unable: list[Deployment] = []  # answered unsupported: not worth repeating
        last: GatewayError | None = None
        repeats = 0
        for _ in range(policy.attempts or len(deps)):
            dep, wait = await self._select(call, route, deps, tried, unable, repeats, last)
            if wait:
                repeats += 1
                await asyncio.sleep(wait)
                if dep.breaker is not None and not dep.breaker.ready and not await dep.breaker.admit():
                    break
            try:
                return await attempt(dep, call, route)
            except GatewayError as e:
                if dep not in tried:
                    tried.append(dep)
                if e.kind == "unsupported" and len(tried) < len(deps):
                    # this deployment's provider cannot do what was asked (n > 1, a route it lacks);
                    # another provider of the model may: move on, but never come back to it
                    unable.append(dep)
                    last = last or e
                    continue
                last = e
                if not policy.retries(e):
                    raise
        assert last is not None
        raise last

    async def _select(self, call: Call, route: ModelRoute, deps: list[Deployment], tried: list[Deployment],
                      unable: list[Deployment], repeats: int,
                      last: GatewayError | None) -> tuple[Deployment, float]:
        """The next deployment and how long to wait first (0 for one this call has not tried yet)."""
        now = time.monotonic()
        if call.deadline and now >= call.deadline:
            raise last or UpstreamTimeout("the request deadline passed before an upstream could be tried")
        cands, reason = _available(deps, tried, now)
        if not cands and reason == "capacity" and last is None and route.queue_timeout > 0:
            # every deployment is full: wait for a slot (within the deadline) rather than refuse at once
            until = min(now + route.queue_timeout, call.deadline or math.inf)
            while not cands and reason == "capacity" and await wait_for_slot(deps, until):
                cands, reason = _available(deps, tried, time.monotonic())
        while cands:
            dep = route.strategy.choose(cands)
            b = dep.breaker
            if b is None or b.ready or await b.admit():
                return dep, 0.0
            cands.remove(dep)
            reason = reason or "open"
        # every untried one is out: repeat one already tried, after a backoff (or its retry-after)
        if last is not None:
            again, _ = _available(tried, unable, now)
            if again:
                dep = route.strategy.choose(again)
                wait = route.retry.wait(repeats, dep.stats.cooling_until - now)
                if wait is not None and not (call.deadline and now + wait >= call.deadline):
                    return dep, wait
            raise last
        raise _none_available(route.name, deps, reason, now)


async def wait_for_slot(deps: list[Deployment], until: float) -> bool:
    """Wait until a max_parallel slot of one of ``deps`` frees (each freed slot wakes one waiting call, in
    arrival order), or ``until`` (monotonic). False when none of them is full (rpm and tpm free only with the
    minute: no use waiting) or the time is up."""
    full = [d for d in deps if d.full()]
    left = until - time.monotonic()
    if not full or left <= 0:
        return False
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    for d in full:
        d.stats.waiters.append(waiter)
    try:
        await asyncio.wait_for(waiter, left)
    except BaseException as e:  # the time is up, or the call was cancelled: out of every queue
        for d in full:
            with contextlib.suppress(ValueError):
                d.stats.waiters.remove(waiter)
        if isinstance(e, TimeoutError):
            return False
        raise
    return True  # woken: the other queues it is in skip it (done) when they next free a slot


def serving(route: Route, deps: list[Deployment]) -> list[Deployment]:
    """The deployments whose provider serves ``route``, when some do (none do: all of them, to say why not)."""
    return [d for d in deps if route in d.provider.routes] or deps


def takes_calls(dep: Deployment, now: float) -> bool:
    """Whether the router would send ``dep`` a call now (healthy, under its limits, breaker not open)."""
    return bool(_available((dep,), (), now)[0])


def _available(deps: Iterable[Deployment], exclude: Iterable[Deployment],
               now: float) -> tuple[list[Deployment], str | None]:
    """Deployments that may take a call now (non-cooling ones first), and why the others may not."""
    ready: list[Deployment] = []
    cooling: list[Deployment] = []
    reason = None
    for d in deps:
        if d in exclude:
            continue
        if not d.stats.healthy:
            reason = reason or "unhealthy"
        elif d.limited and d.at_capacity(now):
            reason = "capacity"
        elif d.breaker is not None and d.breaker.state == OPEN and d.breaker.retry_in() > 0:
            reason = reason or "open"
        elif d.stats.cooling_until > now:
            cooling.append(d)
        else:
            ready.append(d)
    # an upstream that asked us to wait is skipped while another can serve; if none can, the upstream decides
    return (ready or cooling), reason


def _none_available(model: str, deps: list[Deployment], reason: str | None, now: float) -> GatewayError:
    if reason == "capacity":
        return RateLimited(f"every deployment of model {model!r} is at its configured capacity "
                           "(max_parallel, rpm or tpm); try again shortly", retry_after=1.0,
                           code="deployment_capacity")
    waits = [d.breaker.retry_in() for d in deps if d.breaker is not None and d.breaker.state == OPEN]
    why = "circuit breaker open" if reason == "open" else "failing its health checks"
    return Unavailable(f"no deployment of model {model!r} is available ({why})", status=503,
                       retry_after=min(waits) if waits else None, code="no_deployment_available")


async def attempt(dep: Deployment, call: Call, route: ModelRoute | None = None) -> Reply:
    """One call to one deployment, keeping its live statistics and its breaker informed."""
    call.deployment = dep
    call.attempts += 1
    call.tried.append(dep.name)
    stats = dep.stats
    stats.in_flight += 1
    started = call.attempt_at = time.monotonic()
    if stats.rpm is not None:
        stats.rpm.add(1, started)
    breaker = dep.breaker
    traced = call.trace.attempt(dep, call) if call.trace is not None else None  # ends the attempt's span
    try:
        reply = await dep.provider.handlers[call.route](call)
    except GatewayError as e:
        stats.release()
        if traced is not None:
            traced(None, e)
        if call.failed_attempts is None:
            call.failed_attempts = []
        call.failed_attempts.append((dep.name, dep.provider_type, e.status, e.kind, started, time.monotonic()))
        stats.record(not e.retryable, None)
        if e.retry_after and e.kind == "rate_limited":
            cap = route.cooling_cap if route is not None else 30.0
            stats.cooling_until = time.monotonic() + min(e.retry_after, cap)
        if breaker is not None and not starved(e.kind, call.started, call.deadline, started, dep.config.timeout):
            await breaker.record(breaker.ok(e.kind))
        raise
    except BaseException as e:
        stats.release()
        if traced is not None:
            traced(None, e)
        raise
    if reply.stream is not None and route is not None and route.strategy.needs_ttft:
        reply.stream = _first_chunk_timed(reply.stream, reply)

    def done(r: Reply, error: BaseException | None) -> None:
        stats.release()
        if traced is not None:
            traced(r, error)
        now = time.monotonic()
        if error is None:
            stats.record(True, (r.first_byte_at or now) - started)
            if breaker is not None:
                breaker.record_later(True)
        elif isinstance(error, GatewayError):  # the upstream broke the stream after its first byte
            stats.record(not error.retryable, None)
            if breaker is not None and not starved(error.kind, call.started, call.deadline, started,
                                                   dep.config.timeout):
                breaker.record_later(breaker.ok(error.kind))
        # any other error is the client going away: says nothing about the deployment
        if stats.tpm is not None and r.usage is not None:
            stats.tpm.add(r.usage.total_tokens, now)

    reply.on_done(done)
    return reply


async def _first_chunk_timed(stream: AsyncIterator[bytes], reply: Reply) -> AsyncIterator[bytes]:
    """Pass a stream through, noting when its first chunk came (time to first token)."""
    try:
        first = True
        async for chunk in stream:
            if first:
                reply.first_byte_at = time.monotonic()
                first = False
            yield chunk
    finally:
        await aclose(stream)
