"""``GET /v1/providers``: the configured providers, whether each can take traffic now, and its default model."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from relaygate.auth.authenticator import caller
from relaygate.routing.router import WILDCARD, takes_calls
from relaygate.server.http import Request, Response, json_response

if TYPE_CHECKING:
    from relaygate.gateway import Gateway
    from relaygate.routing.deployment import Deployment


def accepts_traffic(dep: Deployment, now: float) -> bool:
    """Whether this deployment can take a call now: the router's own rule (health checks, breaker, limits),
    and an open upstream connection pool."""
    return takes_calls(dep, now) and not dep.provider.client.closed


def providers_body(gw: Gateway) -> dict[str, Any]:
    """Providers in config order; ``default_model`` is the first model name a client can send to it."""
    found: dict[str, dict[str, Any]] = {}
    now = time.monotonic()
    for model_name, deps in gw.table.models.items():
        for dep in deps:
            entry = found.setdefault(dep.provider_type, {"name": dep.provider_type, "available": False,
                                                         "default_model": None})
            entry["available"] = entry["available"] or accepts_traffic(dep, now)
            if entry["default_model"] is None and model_name != WILDCARD:
                entry["default_model"] = model_name
    providers = list(found.values())
    return {"providers": providers, "default": providers[0]["name"] if providers else None}


async def list_providers(gw: Gateway, req: Request) -> Response:
    await caller(gw.auth, req.headers)  # with a master key configured, this needs a key too
    return json_response(providers_body(gw))


ROUTES = [
    ("GET", "/v1/providers", list_providers),
    ("GET", "/providers", list_providers),
]
