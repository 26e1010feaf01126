"""``GET /health`` (alive), ``GET /health/ready`` (config loaded, pool ready, not stopping),
``GET /health/providers``."""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING

from relaygate.routing.health import deployment_report
from relaygate.server.http import Request, Response, json_response
from relaygate.server.workers import WORKER_ENV

if TYPE_CHECKING:
    from relaygate.gateway import Gateway


async def alive(gw: Gateway, req: Request) -> Response:
    """Alive; which process answered (a worker's number under a supervisor) and the config it runs."""
    return json_response({"status": "ok", "pid": os.getpid(), "worker": os.environ.get(WORKER_ENV),
                          "config": {"hash": gw.config_hash, "loaded_at": gw.started}})


async def ready(gw: Gateway, req: Request) -> Response:
    ok = gw.ready and not gw.draining and not gw.session.closed
    status = "ready" if ok else "draining" if gw.draining else "not_ready"
    body = {"status": status, "models": len(gw.table.names()),
            "deployments": len(gw.deployments())}
    return json_response(body, 200 if ok else 503)


async def providers(gw: Gateway, req: Request) -> Response:
    """Each deployment: state, breaker, latency average, error rate, in-flight and a health score."""
    now = time.monotonic()
    reports = await asyncio.gather(*(deployment_report(d, now) for d in gw.deployments()))
    healthy = sum(1 for r in reports if r["state"] == "healthy")
    score = round(sum(r["score"] for r in reports) / len(reports), 4) if reports else 0.0
    return json_response({"deployments": list(reports),
                          "summary": {"deployments": len(reports), "healthy": healthy, "score": score}})


ROUTES = [
    ("GET", "/health", alive),
    ("GET", "/health/ready", ready),
    ("GET", "/health/providers", providers),
]
