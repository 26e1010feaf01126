"""``/admin/…``: keys, teams and users; spend and the request log. Master key only; off without one.

The key store and the log's queries (SQLAlchemy) are imported by the handlers: a gateway without a master key
never needs them, and one with it has loaded them already (its ``KeyStore``).
"""

from __future__ import annotations

import math
import re
import time
from typing import TYPE_CHECKING, Any

from relaygate.api.common import object_body
from relaygate.api.query import Query, no_nul, plain_text
from relaygate.auth.authenticator import presented_key
from relaygate.auth.aws import issued_credentials
from relaygate.core.errors import AuthError, BadRequest, MethodNotAllowed, NotFound, PermissionDenied
from relaygate.core.pricing import NANO
from relaygate.limits.periods import period
from relaygate.server.http import Request, Response, json_response

if TYPE_CHECKING:
    from relaygate.auth.keys import KeyStore
    from relaygate.gateway import Gateway

MAX_ADMIN_BODY = 1024 * 1024


def require_master(gw: Gateway, req: Request) -> None:
    """Refuse a caller without the master key (and everyone, on a gateway without one)."""
    if gw.auth is None:
        raise PermissionDenied("The admin API is off: no master key is configured (auth.master_key or "
                               "RELAYGATE_MASTER_KEY).", code="admin_disabled")
    if not gw.auth.is_master(presented_key(req.headers)):
        raise AuthError("The admin API needs the master key.", code="invalid_master_key")


def _store(gw: Gateway, req: Request) -> KeyStore:
    """The key store, once the caller proved to hold the master key."""
    require_master(gw, req)
    assert gw.keys is not None  # built with the master key
    return gw.keys


async def admin_body(gw: Gateway, req: Request) -> dict[str, Any]:
    body = object_body(await req.json(MAX_ADMIN_BODY))
    for name, value in body.items():
        no_nul(value, name)
    return body


# the longest value each column holds (store/tables.py): a longer id or filter matches nothing
ID_LENGTH = {"key": 40, "team": 100, "user": 100}
FILTER_LENGTH = {"key_id": 40, "team_id": 100, "user_id": 100, "model": 200, "provider": 40, "deployment": 300,
                 "route": 40, "error": 40}


async def _run(gw: Gateway, fn: Any, *args: Any) -> Any:
    assert gw.db is not None
    return await gw.db.run(fn, *args)


# ---- keys ------------------------------------------------------------------------------------------------

async def create_key(gw: Gateway, req: Request) -> Response:
    from relaygate.auth.keys import parse_fields

    store = _store(gw, req)
    fields = parse_fields(await admin_body(gw, req), partial=False)
    secret, view = await _run(gw, store.create_key, fields)
    assert gw.auth is not None
    return json_response({**view, "key": secret, **issued_credentials(gw.auth, view["id"], secret)}, 201)


async def list_keys(gw: Gateway, req: Request) -> Response:
    store = _store(gw, req)
    q = Query(req.query)
    data = await _run(gw, store.list_keys, q.text("team_id", 100), q.text("user_id", 100), q.flag("include_revoked"))
    return json_response({"object": "list", "data": await _with_spend(gw, data)})


async def _with_spend(gw: Gateway, views: list[dict[str, Any]], kind: str = "key") -> list[dict[str, Any]]:
    """Each key's (team's, user's: ``kind``) spend in its current budget period and what is left of its
    budget. The limiter's own figure where it holds one (it counts settled calls at once); else the request
    log, where the limiter reads it from too (one without a budget is not tracked by the limiter: the log
    only)."""
    now = time.time()
    periods = [period(v["budget_period"] or "total", now) for v in views]
    budgeted = [i for i, v in enumerate(views) if v["budget_usd"] is not None]
    spent: list[int | None] = [None] * len(views)
    limiter = gw.limiter
    if limiter is not None and budgeted:
        known = await limiter.known_spend([(f"{kind}:" + views[i]["id"], periods[i][0]) for i in budgeted])
        for i, value in zip(budgeted, known, strict=True):
            spent[i] = value
    db = gw.db
    assert db is not None
    for start in {periods[i][1] for i, s in enumerate(spent) if s is None}:
        ids = [views[i]["id"] for i, s in enumerate(spent) if s is None and periods[i][1] == start]
        from relaygate.auth.keys import keys_spent_since

        logged = await db.on_engine(keys_spent_since, ids, start, kind)
        for i, v in enumerate(views):
            if spent[i] is None and periods[i][1] == start:
                spent[i] = logged.get(v["id"], 0)
    for v, (_, start, end), nano in zip(views, periods, spent, strict=True):
        nano = nano or 0
        budget = v["budget_usd"]
        v["spend_usd"] = nano / NANO
        v["budget_remaining_usd"] = None if budget is None else max(0, round(budget * NANO) - nano) / NANO
        v["budget_period_start"] = start if end is not None else None  # a total budget has no period
        v["budget_period_end"] = end
    return views


async def key_item(gw: Gateway, req: Request) -> Response:
    """GET/PATCH/DELETE /admin/keys/{id}; POST /admin/keys/{id}/rotate and /admin/keys/{id}/revoke."""
    from relaygate.auth.keys import parse_fields

    store = _store(gw, req)
    auth = gw.auth
    assert auth is not None
    key_id, _, action = req.params["rest"].partition("/")
    plain_text(key_id, "id", ID_LENGTH["key"])
    if req.method == "GET" and not action:
        return json_response((await _with_spend(gw, [await _run(gw, store.get_key, key_id)]))[0])
    if req.method == "PATCH" and not action:
        fields = parse_fields(await admin_body(gw, req), partial=True)
        if not fields:
            raise BadRequest("nothing to update")
        view = await _run(gw, store.update_key, key_id, fields)
        auth.forget(key_id)
        return json_response(view)
    if (req.method == "DELETE" and not action) or (req.method == "POST" and action == "revoke"):
        view = await _run(gw, store.revoke_key, key_id)
        auth.forget(key_id)
        return json_response(view)
    if req.method == "POST" and action == "rotate":
        body = await admin_body(gw, req) if req.headers.get("content-length", "0") != "0" else {}
        grace = body.get("grace_seconds", gw.config.auth.rotation_grace)
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or grace < 0:
            raise BadRequest("'grace_seconds' must be a non-negative number", param="grace_seconds")
        secret, view = await _run(gw, store.rotate_key, key_id, float(grace))
        auth.forget(key_id)
        return json_response({**view, "key": secret, **issued_credentials(auth, key_id, secret)})
    if action:
        raise NotFound(f"unknown key action {action!r}; expected rotate or revoke", code="unknown_route")
    raise MethodNotAllowed(f"Method {req.method} is not allowed on /admin/keys/{{id}}")


# ---- teams and users -------------------------------------------------------------------------------------

def _owner_routes(kind: str) -> list[tuple[str, str, Any]]:
    async def create(gw: Gateway, req: Request) -> Response:
        from relaygate.auth.keys import parse_fields

        store = _store(gw, req)
        body = await admin_body(gw, req)
        oid = body.get("id")
        if not isinstance(oid, str) or not oid or len(oid) > 100:
            raise BadRequest(f"a {kind} needs an 'id' (a string of 1 to 100 characters)", param="id")
        plain_text(oid, "id", ID_LENGTH[kind])
        fields = parse_fields(body, partial=False, owner=True)
        fields.pop("id", None)
        return json_response(await _run(gw, store.put_owner, kind, oid, fields, True), 201)

    async def listing(gw: Gateway, req: Request) -> Response:
        store = _store(gw, req)
        return json_response({"object": "list",
                              "data": await _with_spend(gw, await _run(gw, store.list_owners, kind), kind)})

    async def item(gw: Gateway, req: Request) -> Response:
        from relaygate.auth.keys import parse_fields

        store = _store(gw, req)
        oid = plain_text(req.params["rest"], "id", ID_LENGTH[kind])
        if req.method == "GET":
            return json_response((await _with_spend(gw, [await _run(gw, store.get_owner, kind, oid)], kind))[0])
        fields = parse_fields(await admin_body(gw, req), partial=True, owner=True)
        fields.pop("id", None)
        view = await _run(gw, store.put_owner, kind, oid, fields, False)
        assert gw.auth is not None
        gw.auth.forget_all()  # every key of this owner carries its limits
        return json_response(view)

    base = f"/admin/{kind}s"
    return [("POST", base, create), ("GET", base, listing), ("GET", base + "/{rest}", item),
            ("PATCH", base + "/{rest}", item)]


# ---- the response cache ----------------------------------------------------------------------------------

async def cache(gw: Gateway, req: Request) -> Response:
    """GET: the cache's statistics; DELETE: purge it all, one model's entries (``?model=``) or one cache key's
    (``?key=``, the ``x-relaygate-cache-key`` a reply carried)."""
    _store(gw, req)
    layer = gw.cache
    if layer is None:
        raise NotFound("No model has a response cache (a model's 'cache' section turns it on).",
                       code="cache_disabled")
    if req.method == "GET":
        return json_response({"object": "cache", **layer.snapshot()})
    q = Query(req.query)
    key = q.text("key", 32)
    if key is not None and not _CACHE_KEY.fullmatch(key):
        raise BadRequest("'key' must be a cache key (32 hex digits, as x-relaygate-cache-key shows)", param="key")
    purged = await layer.purge(q.text("model", 200), key)
    return json_response({"object": "cache.purge", "purged": purged})


_CACHE_KEY = re.compile(r"[0-9a-f]{32}")


# ---- spend and logs --------------------------------------------------------------------------------------

def log_filters(q: Query, names: tuple[str, ...]) -> dict[str, str]:
    """The request-log filters among ``names`` that the query gives, as /admin/logs, /admin/spend and the
    dashboard's overview all read them: text that fits its log column (longer could never match), and a key
    id of the form keys have."""
    filters: dict[str, str] = {}
    for name in names:
        if name in q:
            value = q.text(name, FILTER_LENGTH[name]) or ""
            if name == "key_id" and not _KEY_ID.fullmatch(value):
                raise BadRequest("'key_id' is not a key id (letters, digits, '-', '_' or '.')", param=name,
                                 code="invalid_value")
            filters[name] = value
    return filters


_KEY_ID = re.compile(r"[0-9A-Za-z_.\-]{1,40}")  # key_<hex>, cfg_<auth.keys[].id>, master


def _filters(q: Query) -> dict[str, Any]:
    from relaygate.store import queries

    return log_filters(q, queries.FILTERS)


async def spend(gw: Gateway, req: Request) -> Response:
    from relaygate.store import queries

    _store(gw, req)
    q = Query(req.query)
    group = q.choice("group_by", queries.GROUPS, "key")
    assert gw.db is not None
    data = await _run(gw, queries.spend, gw.db.engine, group, _filters(q), q.instant("start"), q.instant("end"))
    total = sum(d["cost_nano"] for d in data)
    saved = sum(d["saved_nano"] for d in data)
    return json_response({"object": "list", "group_by": group, "data": data, "total_cost_nano": total,
                          "total_cost_usd": total / NANO, "total_saved_nano": saved, "total_saved_usd": saved / NANO})


async def logs(gw: Gateway, req: Request) -> Response:
    from relaygate.store import queries

    _store(gw, req)
    q = Query(req.query)
    limit = q.integer("limit", 1, 1000, 100)
    exact = q.integer("status", 100, 599)
    status = (exact, exact) if exact is not None else None
    if "status_class" in q:  # 4xx: every status from 400 to 499
        if exact is not None:
            raise BadRequest("give 'status' or 'status_class', not both", param="status_class")
        first = int(q.choice("status_class", STATUS_CLASSES, "")[0]) * 100
        status = (first, first + 99)
    cursor = None
    if "cursor" in q:
        ts, _, uid = (q.text("cursor", 80) or "").partition(":")
        try:
            cursor = (float(ts), uid)
        except ValueError:
            cursor = None
        if cursor is None or not math.isfinite(cursor[0]) or not _UID.fullmatch(uid):
            raise BadRequest("'cursor' is not one this API returned", param="cursor")
    assert gw.db is not None and limit is not None
    rows, nxt = await _run(gw, queries.logs, gw.db.engine, _filters(q), status, q.instant("start"),
                           q.instant("end"), limit, cursor, q.flag("bodies"))
    return json_response({"object": "list", "data": rows, "next_cursor": nxt})


_UID = re.compile(r"[0-9A-Za-z_\-]{1,32}")
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


# ---- reload ----------------------------------------------------------------------------------------------

async def reload_config(gw: Gateway, req: Request) -> Response:
    """Read the config file again; an invalid one is refused with its errors and the running one stays."""
    _store(gw, req)
    if gw.control is None:
        raise NotFound("This gateway has no config to reload.", code="reload_unavailable")
    outcome = await gw.control.reload("POST /admin/reload")
    if outcome.status == "invalid":
        return json_response({"error": {
            "message": f"The new config is invalid ({len(outcome.errors)} error(s)); the running one "
                       f"({outcome.config_hash}) stays: " + "; ".join(outcome.errors),
            "type": "invalid_request_error", "param": None, "code": "invalid_config", "errors": outcome.errors}},
            400)
    if outcome.status == "refused":
        return json_response({"error": {"message": f"Not reloaded: {'; '.join(outcome.errors)}.",
                                         "type": "api_error", "param": None, "code": "reload_refused"}}, 503)
    return json_response({"status": outcome.status, "warnings": outcome.warnings,
                          "config": {"hash": outcome.config_hash, "loaded_at": outcome.loaded_at}})


# ---- stored objects (Responses, Conversations, Assistants) ---------------------------------------------

OBJECT_KINDS = ("response", "conversation", "item", "assistant", "thread", "message", "run", "step",
                "forwarded")  # forwarded: an id an Assistants passthrough upstream created, and its owner


async def list_objects(gw: Gateway, req: Request) -> Response:
    """``GET /admin/objects?kind=…[&owner=team:…|user:…|key:…][&parent=…][&limit&after]``, newest first."""
    _store(gw, req)
    q = Query(req.query)
    kind = q.choice("kind", OBJECT_KINDS, "response")
    limit = q.integer("limit", 1, 100, 20) or 20
    objs, more = await gw.objects.page(kind, q.text("owner", 120), q.text("parent", 64), limit, "desc",
                                       q.text("after", 64))
    return json_response({"object": "list", "has_more": more, "data": [
        {"id": o.id, "kind": o.kind, "owner": o.owner, "parent": o.parent, "created_at": o.created_at,
         "object": o.data} for o in objs]})


async def delete_object(gw: Gateway, req: Request) -> Response:
    """``DELETE /admin/objects/{id}?kind=…``: whoever owns it, with what belongs to it."""
    _store(gw, req)
    kind = Query(req.query).choice("kind", OBJECT_KINDS, "response")
    oid = plain_text(req.params["rest"], "id", 64)
    if not await gw.objects.delete(kind, oid, None):
        raise NotFound(f"No {kind} found with id '{oid}'.")
    return json_response({"id": oid, "kind": kind, "deleted": True})


ROUTES = [
    ("POST", "/admin/reload", reload_config),
    ("GET", "/admin/cache", cache),
    ("DELETE", "/admin/cache", cache),
    ("POST", "/admin/keys", create_key),
    ("GET", "/admin/keys", list_keys),
    ("GET", "/admin/keys/{rest}", key_item),
    ("PATCH", "/admin/keys/{rest}", key_item),
    ("DELETE", "/admin/keys/{rest}", key_item),
    ("POST", "/admin/keys/{rest}", key_item),
    *_owner_routes("team"),
    *_owner_routes("user"),
    ("GET", "/admin/spend", spend),
    ("GET", "/admin/logs", logs),
    ("GET", "/admin/objects", list_objects),
    ("DELETE", "/admin/objects/{rest}", delete_object),
]
