"""``GET /api/models`` and ``GET /api/models/search``: the model catalog (cards, who serves each model, what
discovery found), filtered, sorted and paged (docs/models.md). Any valid key may ask: the master key sees every
model, a virtual key only the models it may use."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import TYPE_CHECKING

from relaygate.api.query import Query, plain_text
from relaygate.auth.authenticator import caller
from relaygate.catalog.search import (
    CAPABILITY_FILTERS,
    MAX_PROVIDER,
    MAX_Q,
    SORTS,
    Filters,
    entries,
    ordered,
    visible,
)
from relaygate.core.errors import BadRequest
from relaygate.server.http import Request, Response, json_response

if TYPE_CHECKING:
    from relaygate.gateway import Gateway

BOOLEAN_FILTERS = (*CAPABILITY_FILTERS, "configured", "discovered")
PARAMS = frozenset({*(f.name for f in fields(Filters)), "sort", "order", "limit", "offset"})
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_COST = 1e6  # USD per 1M input tokens: beyond any model's


def _boolean(query: Query, name: str) -> bool | None:
    value = query.values.get(name)
    if value is None:
        return None
    if value in ("true", "false"):
        return value == "true"
    raise BadRequest(f"'{name}' must be true or false", param=name, code="invalid_value")


def _cost(query: Query) -> float | None:
    value = query.values.get("max_cost")
    if value is None:
        return None
    plain_text(value, "max_cost", 40)
    try:
        cost = float(value)
    except ValueError:
        raise BadRequest("'max_cost' must be a number (USD per 1M input tokens)", param="max_cost",
                         code="invalid_type") from None
    if not math.isfinite(cost) or not 0 <= cost <= MAX_COST:
        raise BadRequest(f"'max_cost' must be between 0 and {MAX_COST:g}", param="max_cost", code="invalid_value")
    return cost


def filters_of(query: Query) -> Filters:
    """The filters a query asks for; an unknown parameter or a bad value is a 400 naming it."""
    unknown = sorted(set(query.values) - PARAMS)
    if unknown:
        raise BadRequest(f"unknown query parameter {unknown[0]!r}; expected some of {', '.join(sorted(PARAMS))}",
                         param=unknown[0], code="unknown_parameter")
    provider = query.text("provider", MAX_PROVIDER)
    return Filters(provider=provider.lower() if provider else None,
                   **{name: _boolean(query, name) for name in BOOLEAN_FILTERS},
                   min_context=query.integer("min_context", 0, 2**40), max_cost=_cost(query),
                   q=query.text("q", MAX_Q) or None)


async def list_catalog(gw: Gateway, req: Request) -> Response:
    key = await caller(gw.auth, req.headers)  # with a master key configured, any valid key
    query = Query(req.query)
    wanted = filters_of(query)
    sort = query.choice("sort", SORTS, "name")
    order = query.choice("order", ("asc", "desc"), "desc" if sort == "context" else "asc")
    limit = query.integer("limit", 1, MAX_LIMIT, DEFAULT_LIMIT) or DEFAULT_LIMIT
    offset = query.integer("offset", 0, 2**31 - 1, 0) or 0
    found = [e for e in entries(gw.catalog, gw.table.models, gw.discovery) if visible(e, key) and wanted.matches(e)]
    found = ordered(found, sort, order == "desc")
    page = found[offset:offset + limit]
    more = offset + limit < len(found)
    body = {"object": "list", "data": [e.json() for e in page], "has_more": more, "total": len(found),
            "offset": offset, "limit": limit, "next_offset": offset + limit if more else None,
            "discovery": {"enabled": gw.config.discovery.enabled, "interval": gw.config.discovery.interval,
                          "providers": gw.discovery.status() if visible_status(key) else []}}
    return json_response(body)


def visible_status(key: object) -> bool:
    """Discovery's per-deployment status names every deployment: for the master key (and an open gateway)."""
    from relaygate.auth.principal import MASTER

    return key is None or key is MASTER


ROUTES = [
    ("GET", "/api/models", list_catalog),
    ("GET", "/api/models/search", list_catalog),
]
