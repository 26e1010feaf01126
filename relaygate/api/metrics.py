"""``GET /metrics``: this gateway's Prometheus metrics (observability/metrics.py), behind the master key
unless ``metrics.public``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from relaygate.auth.authenticator import presented_key
from relaygate.core.errors import AuthError, NotFound
from relaygate.server.http import Request, Response

if TYPE_CHECKING:
    from relaygate.gateway import Gateway


async def metrics(gw: Gateway, req: Request) -> Response:
    if gw.metrics is None or not gw.config.metrics.enabled:
        raise NotFound("Metrics are off (metrics.enabled: false).", code="metrics_disabled")
    if not gw.config.metrics.public and gw.auth is not None and not gw.auth.is_master(presented_key(req.headers)):
        raise AuthError("GET /metrics needs the master key (or metrics.public: true).", code="invalid_master_key")
    shared = gw.shared_metrics  # a worker among several: every worker's metrics, labelled
    source = shared if shared is not None else gw.metrics
    body, content_type = source.exposition(req.headers.get("accept"))
    return Response(body, media_type=content_type)


ROUTES = [("GET", "/metrics", metrics)]
