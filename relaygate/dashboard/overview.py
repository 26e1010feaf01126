"""The dashboard's overview: the request log aggregated into time buckets by the database, not in Python.

One grouped scan of the window's rows (read from the covering index ``tables.OVERVIEW_INDEX``), returning a few rows per bucket:
counts, errors, cost, tokens and cache hits per (bucket, latency bin, time-to-first-token bin). Percentiles
come from those bins (interpolated inside the bin, as Prometheus' ``histogram_quantile`` does): SQLite has no percentile function, and fetching every latency of a day's
100,000 rows to sort them in Python cost more than the whole page may take (bench/dashboard.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Integer, Select, case, cast, func, select

from relaygate.core.pricing import NANO
from relaygate.store import tables


@dataclass(frozen=True, slots=True)
class Window:
    """How far back the overview looks and how wide each bucket is (seconds)."""

    span: int
    bucket: int

    @property
    def buckets(self) -> int:
        return self.span // self.bucket


WINDOWS = {"hour": Window(3600, 60), "day": Window(86400, 900)}

# upper bounds (ms) of the latency and TTFT bins: fine where LLM calls usually land, coarse in the tail
BOUNDS_MS = (5, 10, 25, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000, 4000, 6000, 8000,
             10000, 15000, 20000, 30000, 45000, 60000, 90000, 120000, 300000)


def _bin(column: Any) -> Any:
    """The index of the first bound above ``column`` (len(BOUNDS_MS) beyond the last; -1 for NULL)."""
    return case((column.is_(None), -1), *[(column < bound, i) for i, bound in enumerate(BOUNDS_MS)],
                else_=len(BOUNDS_MS))


def _bucket(engine: Engine, start: float, width: int) -> Any:
    """The bucket number of a row: whole buckets since ``start`` (rows are never before it). PostgreSQL's
    CAST rounds, SQLite's truncates: floor() where it exists, CAST where it truncates."""
    offset = (tables.request_log.c.ts - start) / width
    if engine.dialect.name == "postgresql":
        return cast(func.floor(offset), Integer)
    return cast(offset, Integer)


def quantile(counts: list[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of values counted in BOUNDS_MS's bins, interpolated inside its bin."""
    total = sum(counts)
    if not total:
        return None
    target = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= target:
            if i == len(BOUNDS_MS):  # beyond the last bound: at least that
                return float(BOUNDS_MS[-1])
            low = BOUNDS_MS[i - 1] if i else 0
            return low + (BOUNDS_MS[i] - low) * (target - seen) / n
        seen += n
    return float(BOUNDS_MS[-1])


# what the overview may be narrowed to: the calls of one model (as the client named it), key or team; each is
# a column of the covering index, so a filtered overview is read from the index alone too
FILTERS = ("model", "key_id", "team_id")


def overview(engine: Engine, window: Window, now: float, filters: dict[str, str] | None = None) -> dict[str, Any]:
    """Per bucket of ``window`` ending at the bucket that holds ``now``: rates, percentiles, cost, tokens; of
    the calls matching ``filters`` (names of FILTERS, each an exact value) when given."""
    q, start = overview_query(engine, window, now, filters or {})
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    return _series(window, start, rows, filters or {})


def overview_query(engine: Engine, window: Window, now: float, filters: dict[str, str]) -> tuple[Select[Any], float]:
    """The overview's one grouped query, and the start of its window."""
    r = tables.request_log
    end = (math.floor(now / window.bucket) + 1) * window.bucket
    start = end - window.span
    bucket = _bucket(engine, start, window.bucket).label("b")
    lat, ttft = _bin(r.c.latency_ms).label("lat"), _bin(r.c.ttft_ms).label("ttft")
    # one pass over the window's rows: reading them is most of the cost (a second pass for the TTFT bins
    # took the day's overview from ~0.6 to ~1 s on 100,000 rows; bench/dashboard.py)
    q = (select(bucket, lat, ttft, func.count().label("n"),
                func.count(r.c.error).label("errors"),
                func.sum(case((r.c.status >= 500, 1), else_=0)).label("server_errors"),
                func.coalesce(func.sum(r.c.cost_nano), 0).label("cost"),
                func.coalesce(func.sum(r.c.prompt_tokens), 0).label("prompt"),
                func.coalesce(func.sum(r.c.completion_tokens), 0).label("completion"),
                func.sum(case((r.c.cache_hit.is_(True), 1), else_=0)).label("hits"))
         .where(r.c.ts >= start, r.c.ts < end, *(r.c[name] == value for name, value in filters.items()))
         .group_by(bucket, lat, ttft))
    return q, start


def _series(window: Window, start: float, rows: Sequence[Any], filters: dict[str, str]) -> dict[str, Any]:
    n, bins = window.buckets, len(BOUNDS_MS) + 1
    count = [0] * n
    sums = {name: [0] * n for name in ("errors", "server_errors", "cost", "prompt", "completion", "hits")}
    latency = [[0] * bins for _ in range(n)]
    ttft = [[0] * bins for _ in range(n)]
    for row in rows:
        b = int(row.b)
        if not 0 <= b < n:
            continue  # a row on the window's edge, rounded out of it
        calls = int(row.n)
        count[b] += calls
        latency[b][int(row.lat)] += calls
        if row.ttft >= 0:  # -1: no first token (not streamed, or failed before one)
            ttft[b][int(row.ttft)] += calls
        for name, values in sums.items():
            values[b] += int(getattr(row, name) or 0)
    width = window.bucket

    def share(part: list[int]) -> list[float | None]:
        return [p / c if c else None for p, c in zip(part, count, strict=True)]

    buckets = {
        "t": [start + i * width for i in range(n)],
        "requests": count,
        "requests_per_second": [c / width for c in count],
        "error_rate": share(sums["errors"]),
        "server_error_rate": share(sums["server_errors"]),
        "latency_p50_ms": [quantile(h, 0.5) for h in latency],
        "latency_p95_ms": [quantile(h, 0.95) for h in latency],
        "ttft_p50_ms": [quantile(h, 0.5) for h in ttft],
        "ttft_p95_ms": [quantile(h, 0.95) for h in ttft],
        "cost_usd_per_hour": [c / NANO * 3600 / width for c in sums["cost"]],
        "cache_hit_rate": share(sums["hits"]),
        "prompt_tokens": sums["prompt"],
        "completion_tokens": sums["completion"],
    }
    total = sum(count)
    all_latency = [sum(col) for col in zip(*latency, strict=True)]
    all_ttft = [sum(col) for col in zip(*ttft, strict=True)]
    totals = {
        "requests": total,
        "requests_per_second": total / window.span,
        "errors": sum(sums["errors"]),
        "error_rate": sum(sums["errors"]) / total if total else None,
        "latency_p50_ms": quantile(all_latency, 0.5),
        "latency_p95_ms": quantile(all_latency, 0.95),
        "ttft_p50_ms": quantile(all_ttft, 0.5),
        "ttft_p95_ms": quantile(all_ttft, 0.95),
        "cost_usd": sum(sums["cost"]) / NANO,
        "cost_usd_per_hour": sum(sums["cost"]) / NANO * 3600 / window.span,
        "cache_hit_rate": sum(sums["hits"]) / total if total else None,
        "prompt_tokens": sum(sums["prompt"]),
        "completion_tokens": sum(sums["completion"]),
    }
    return {"object": "dashboard.overview", "start": start, "end": start + window.span, "filters": filters,
            "bucket_seconds": width, "buckets": buckets, "totals": totals}
