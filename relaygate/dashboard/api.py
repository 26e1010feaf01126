"""``/dashboard``: the page and its assets (public: they hold no data), and the JSON it reads that no other API
serves (master key): the overview's time series and one log row in full. Everything else the page shows comes
from the APIs that exist already (/admin/…, /health/providers, /api/models), called with the key the operator
typed into the page, which the browser keeps in its session storage only (docs/dashboard.md)."""

from __future__ import annotations

import re
import time
from importlib import resources
from typing import TYPE_CHECKING

from relaygate.api.admin import log_filters, require_master
from relaygate.api.query import Query
from relaygate.core.errors import BadRequest, NotFound
from relaygate.server.http import Request, Response, json_response

if TYPE_CHECKING:
    from relaygate.gateway import Gateway

TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
         ".txt": "text/plain; charset=utf-8"}
# scripts and styles from this origin only (no inline script: a log row's text can never run), no framing
PAGE_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-cache",
}
_ASSET = re.compile(r"(?:vendor/)?[a-z0-9][a-z0-9_.-]{0,80}")
_UID = re.compile(r"[0-9A-Za-z_\-]{1,32}")


def asset(name: str) -> Response:
    """A file shipped in ``relaygate/dashboard/static`` (names checked: nothing outside it is reachable)."""
    suffix = name[name.rfind("."):] if "." in name else ""
    if not _ASSET.fullmatch(name) or ".." in name or suffix not in TYPES:
        raise NotFound(f"No dashboard file named {name[:100]!r}.", code="unknown_route")
    path = resources.files("relaygate.dashboard").joinpath("static", *name.split("/"))
    if not path.is_file():
        raise NotFound(f"No dashboard file named {name[:100]!r}.", code="unknown_route")
    return Response(path.read_bytes(), headers={**PAGE_HEADERS, "content-type": TYPES[suffix]})


async def page(gw: Gateway, req: Request) -> Response:
    return asset("index.html")


async def static(gw: Gateway, req: Request) -> Response:
    return asset(req.params["rest"])


async def session(gw: Gateway, req: Request) -> Response:
    """Whether the key the login form sent is the master key (the page asks before it shows anything)."""
    require_master(gw, req)
    return json_response({"object": "dashboard.session", "ok": True, "config_hash": gw.config_hash,
                          "chaos": gw.chaos is not None, "alerts": gw.alerts is not None})


async def overview_series(gw: Gateway, req: Request) -> Response:
    """``GET /dashboard/api/overview?window=hour|day[&model=…][&key_id=…][&team_id=…]``: the request log in
    time buckets, of every call or of one model's, key's or team's."""
    from relaygate.dashboard.overview import (  # SQLAlchemy, loaded with the key store
        FILTERS,
        WINDOWS,
        overview,
    )

    require_master(gw, req)
    q = Query(req.query)
    unknown = sorted(set(q.values) - {"window", *FILTERS})
    if unknown:
        raise BadRequest(f"unknown parameter '{unknown[0]}'; the overview takes 'window', "
                         f"{', '.join(repr(f) for f in FILTERS)}", param=unknown[0])
    window = WINDOWS[q.choice("window", WINDOWS, "hour")]
    filters = log_filters(q, FILTERS)
    data = await gw.db.on_engine(overview, window, time.time(), filters)
    return json_response(data)



async def log_detail(gw: Gateway, req: Request) -> Response:
    """``GET /dashboard/api/logs/{uid}``: one call's row in full, its bodies too when the log stores them
    (redacted when they were written: request_log.bodies)."""
    from relaygate.store import queries

    require_master(gw, req)
    uid = req.params["rest"]
    if not _UID.fullmatch(uid):
        raise BadRequest("a log row's id is 1 to 32 letters, digits, '-' or '_'", param="uid")
    row = await gw.db.on_engine(queries.log_row, uid)
    if row is None:
        raise NotFound(f"No request log row with uid '{uid}'.", code="log_row_not_found")
    return json_response(row)


ROUTES = [
    ("GET", "/dashboard", page),
    ("GET", "/dashboard/{rest}", static),
    ("GET", "/dashboard/api/session", session),
    ("GET", "/dashboard/api/overview", overview_series),
    ("GET", "/dashboard/api/logs/{rest}", log_detail),
]
