"""Read-side queries of the request log: spend grouped by a dimension, and filtered, paged log rows."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Engine, and_, case, func, or_, select

from relaygate.core.pricing import NANO
from relaygate.store import tables

GROUPS = {"key": "key_id", "team": "team_id", "user": "user_id", "model": "model", "provider": "provider",
          "deployment": "deployment", "day": "day"}
FILTERS = ("key_id", "team_id", "user_id", "model", "provider", "deployment", "route", "error")


def _where(filters: dict[str, Any], since: float | None, until: float | None) -> list[Any]:
    r = tables.request_log
    conds: list[Any] = [r.c[name] == value for name, value in filters.items()]
    if since is not None:
        conds.append(r.c.ts >= since)
    if until is not None:
        conds.append(r.c.ts < until)
    return conds


def spend(engine: Engine, group: str, filters: dict[str, Any], since: float | None,
          until: float | None) -> list[dict[str, Any]]:
    """Requests, tokens, cost, cache hits and what they saved per value of ``group`` (one of GROUPS), dearest
    first."""
    r = tables.request_log
    col = r.c[GROUPS[group]]
    cost = func.coalesce(func.sum(r.c.cost_nano), 0)
    q = (select(col.label("value"), func.count().label("requests"), cost.label("cost_nano"),
                func.coalesce(func.sum(r.c.prompt_tokens), 0).label("prompt_tokens"),
                func.coalesce(func.sum(r.c.completion_tokens), 0).label("completion_tokens"),
                func.count(r.c.error).label("errors"), func.count(case((r.c.cache_hit, 1))).label("cache_hits"),
                func.coalesce(func.sum(r.c.saved_nano), 0).label("saved_nano"))
         .where(*_where(filters, since, until)).group_by(col).order_by(cost.desc(), col))
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    return [{GROUPS[group]: row.value, "requests": int(row.requests), "errors": int(row.errors or 0),
             "prompt_tokens": int(row.prompt_tokens), "completion_tokens": int(row.completion_tokens),
             "cost_nano": int(row.cost_nano), "cost_usd": int(row.cost_nano) / NANO,
             "cache_hits": int(row.cache_hits or 0), "saved_nano": int(row.saved_nano),
             "saved_usd": int(row.saved_nano) / NANO} for row in rows]


def logs(engine: Engine, filters: dict[str, Any], status: tuple[int, int] | None, since: float | None,
         until: float | None, limit: int, cursor: tuple[float, str] | None,
         bodies: bool) -> tuple[list[dict[str, Any]], str | None]:
    """Log rows, newest first; ``status`` an inclusive range (one status: (s, s)); ``cursor`` (ts, uid)
    continues after the last row of the previous page."""
    r = tables.request_log
    conds = _where(filters, since, until)
    if status is not None:
        low, high = status
        conds.append(r.c.status == low if low == high else r.c.status.between(low, high))
    if cursor is not None:
        ts, uid = cursor
        conds.append(or_(r.c.ts < ts, and_(r.c.ts == ts, r.c.uid < uid)))
    cols = [c for c in r.c if bodies or c.name not in ("request_body", "response_body")]
    q = select(*cols).where(*conds).order_by(r.c.ts.desc(), r.c.uid.desc()).limit(limit + 1)
    rows = _dicts(engine, q)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = f"{rows[-1]['ts']!r}:{rows[-1]['uid']}" if more and rows else None
    return rows, next_cursor


def log_row(engine: Engine, uid: str) -> dict[str, Any] | None:
    """One log row by its uid, with its bodies (None, or as stored: redacted when written)."""
    r = tables.request_log
    rows = _dicts(engine, select(*r.c).where(r.c.uid == uid))
    return rows[0] if rows else None


def _dicts(engine: Engine, q: Any) -> list[dict[str, Any]]:
    """The rows of ``q`` by column name, each with its cost (and what a cache hit saved) in USD beside the
    nano-dollars, and its attempts (``attempt_log``) as a list."""
    with engine.connect() as conn:
        result = conn.execute(q)
        names = [str(k) for k in result.keys()]  # plain str: orjson refuses str subclasses as keys
        rows = [dict(zip(names, row, strict=True)) for row in result]
    for row in rows:
        row["cost_usd"] = row["cost_nano"] / NANO
        row["saved_usd"] = row["saved_nano"] / NANO
        tries = row.get("attempt_log")
        if tries is not None:  # stored as JSON text (a retried call's attempts): returned as the list it is
            row["attempt_log"] = _object(tries)
        if row.get("condensed"):  # stored as JSON text: shown as the object it is
            row["condensed"] = _object(row["condensed"])
    return rows


def _object(text: Any) -> Any:
    """A JSON column's value (``attempt_log``, ``condensed``) as the gateway wrote it; text that is not JSON (a
    row written by hand, or cut) as it is, so that one odd row never fails the whole listing."""
    try:
        return orjson.loads(text)
    except (orjson.JSONDecodeError, TypeError):
        return text
