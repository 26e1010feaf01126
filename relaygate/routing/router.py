"""The innermost pipeline layer: find the model's deployments, pick one, call its provider."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable

from ..call import Call, Reply
from ..errors import GatewayError, ModelNotFound
from .deployment import Deployment
from .voices import narrow_by_voice

WILDCARD = "*"


class ModelTable:
    """Client-facing model names and their deployments; resolves ``provider/model`` and wildcards."""

    def __init__(self, models: dict[str, list[Deployment]], provider_types: Iterable[str]) -> None:
        self.models = models
        self._provider_types = set(provider_types)

    def names(self) -> list[str]:
        return [n for n in self.models if n != WILDCARD]

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
            known = ", ".join(self.names()) or "none"
            raise ModelNotFound(f"The model {call.model!r} does not exist on this gateway. "
                                f"Available models: {known}.", param="model")
        if provider:
            deps = [d for d in deps if d.provider_type == provider]
            if not deps:
                raise ModelNotFound(f"The model {name!r} has no deployment on provider {provider!r}.",
                                    param="provider")
        call.provider = provider
        return deps


class Router:
    """Round robin over a model's deployments; one attempt. (Strategies and retries plug in here.)"""

    def __init__(self, table: ModelTable) -> None:
        self.table = table
        self._cycles: dict[int, itertools.count[int]] = {}

    def pick(self, deps: list[Deployment]) -> Deployment:
        if len(deps) == 1:
            return deps[0]
        counter = self._cycles.setdefault(id(deps[0]), itertools.count())
        return deps[next(counter) % len(deps)]

    async def __call__(self, call: Call) -> Reply:
        dep = self.pick(narrow_by_voice(call, self.table.resolve(call)))
        return await attempt(dep, call)


async def attempt(dep: Deployment, call: Call) -> Reply:
    """One call to one deployment, keeping its live statistics."""
    call.deployment = dep
    call.attempts += 1
    call.tried.append(dep.name)
    stats = dep.stats
    stats.in_flight += 1
    started = time.monotonic()
    try:
        reply = await getattr(dep.provider, call.route)(call)
    except GatewayError as e:
        stats.in_flight -= 1
        stats.record(not e.retryable, None)
        raise
    except BaseException:
        stats.in_flight -= 1
        raise

    def done(r: Reply, error: BaseException | None) -> None:
        stats.in_flight -= 1
        first = r.first_byte_at or time.monotonic()
        stats.record(error is None, first - started)

    reply.on_done(done)
    return reply
