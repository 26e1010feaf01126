"""``GET /health`` (alive: always 200, with the gateway's health status and score), ``GET /health/ready``
(config loaded, pool ready, not stopping): public, for load balancers and orchestrators;
``GET /health/providers`` (each deployment's score and its parts, the last probe error): the operator's
view, so it takes the master key when the gateway has one (docs/routing.md)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING

from relaygate.auth.authenticator import presented_key
from relaygate.core.errors import AuthError
from relaygate.routing.health import deployment_report, overall
from relaygate.server.http import Request, Response, json_response
from relaygate.server.workers import WORKER_ENV

if TYPE_CHECKING:
    from relaygate.gateway import Gateway


async def alive(gw: Gateway, req: Request) -> Response:
    """Liveness (always 200 while the process serves): ``status`` healthy|degraded|unhealthy and ``score``
    0-100 say how well the configured models can be served (routing/health.py: ``overall``); which process
    answered (a worker's number under a supervisor) and the config it runs."""
    status, score = overall(gw.table.models)
    return json_response({"status": status, "score": score, "pid": os.getpid(), "worker": os.environ.get(WORKER_ENV),
                          "config": {"hash": gw.config_hash, "loaded_at": gw.started}})


async def ready(gw: Gateway, req: Request) -> Response:
    ok = gw.ready and not gw.draining and not gw.client.closed
    status = "ready" if ok else "draining" if gw.draining else "not_ready"
    body = {"status": status, "models": len(gw.table.names()),
            "deployments": len(gw.deployments())}
    return json_response(body, 200 if ok else 503)


async def providers(gw: Gateway, req: Request) -> Response:
    """Each deployment: state, breaker, latency average, error rate, in-flight and a health score.

    Deployment names, upstream kinds and error texts describe the operator's set-up, not a caller's: with a
    master key configured only it may read them (the texts are scrubbed of secrets and addresses either way,
    core/scrub.py); on an open gateway, which serves every model to anyone, so does this."""
    if gw.auth is not None and not gw.auth.is_master(presented_key(req.headers)):
        raise AuthError("GET /health/providers needs the master key (GET /health and /health/ready are public).",
                        code="invalid_master_key")
    now = time.monotonic()
    reports = await asyncio.gather(*(deployment_report(d, now) for d in gw.deployments()))
    healthy = sum(1 for r in reports if r["state"] == "healthy")
    status, score = overall(gw.table.models)
    return json_response({"deployments": list(reports),
                          "summary": {"deployments": len(reports), "healthy": healthy, "status": status,
                                      "score": score}})


ROUTES = [
    ("GET", "/health", alive),
    ("GET", "/health/ready", ready),
    ("GET", "/health/providers", providers),
]
