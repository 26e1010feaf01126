"""``GET /health`` (the process is alive) and ``GET /health/ready`` (config loaded, pool ready)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..http import Request, Response, json_response

if TYPE_CHECKING:
    from ..gateway import Gateway


async def alive(gw: Gateway, req: Request) -> Response:
    return json_response({"status": "ok"})


async def ready(gw: Gateway, req: Request) -> Response:
    ok = gw.ready and not gw.session.closed
    body = {"status": "ready" if ok else "not_ready", "models": len(gw.table.names()),
            "deployments": len(gw.deployments())}
    return json_response(body, 200 if ok else 503)


ROUTES = [
    ("GET", "/health", alive),
    ("GET", "/health/ready", ready),
]
