"""How long the dashboard takes to load with a large request log: 100,000 rows by default.

Fills a fresh database (SQLite file, or PostgreSQL with --pg URL) with synthetic rows spread over the last day
(``--spread hour`` puts them all in the last hour: the overview's one-hour window then aggregates every row),
starts the real gateway on it, and times what a browser fetches to show the overview: the page, its script,
styles and chart library, the session check and the overview's JSON, one after the other over one connection,
as ``GET`` round trips from this process. Prints the median and the worst of ``-n`` loads per window, and the
time of the aggregate query alone; with each, the CPU time it took (the gateway runs in this process, so that
counts its work and the client's: on a busy shared machine the wall time is mostly waiting for a core).

    PYTHONPATH=. python bench/dashboard.py               # 100,000 rows over a day, SQLite, 7 loads each
    PYTHONPATH=. python bench/dashboard.py --rows 100000 --spread hour
    PYTHONPATH=. python bench/dashboard.py --pg postgresql://root@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import statistics
import sys
import tempfile
import time
from typing import Any

from relaygate.dashboard.overview import WINDOWS, overview, overview_query
from relaygate.store import tables
from relaygate.store.db import Database
from relaygate.testing.gateway import GatewayThread

MASTER = "sk-bench-dashboard-5b1f0c9e27d84a63"
BODY = '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "' + "lorem ipsum " * 30 + '"}]}'
PAGE = ("/dashboard", "/dashboard/app.js", "/dashboard/style.css", "/dashboard/vendor/uplot.iife.min.js",
        "/dashboard/vendor/uplot.min.css", "/dashboard/api/session")


def fill(db: Database, rows: int, span: float, now: float) -> None:
    """``rows`` plausible log rows between ``now - span`` and ``now``: a few models, keys and teams, 3 % errors,
    a fifth streamed (with a TTFT), some cache hits; a request and response body of a few hundred bytes each
    (the log's bodies on: rows as wide as a real log's, which the scan has to step over)."""
    rng = random.Random(7)
    models = ["gpt-4o-mini", "gpt-4o", "claude-sonnet", "gemini-flash"]
    batch: list[dict[str, Any]] = []
    # in time order, as the gateway appends them (rows in random order would make the index scan seek)
    times = sorted(now - rng.random() * span for _ in range(rows))
    with db.engine.begin() as conn:
        for i, ts in enumerate(times):
            failed = rng.random() < 0.03
            stream = rng.random() < 0.2
            latency = rng.lognormvariate(6.5, 0.8)
            model = rng.choice(models)
            batch.append({
                "uid": f"{i:032x}", "request_id": f"req_{i:020x}", "ts": ts,
                "day": time.strftime("%Y-%m-%d", time.gmtime(ts)), "key_id": f"key_{i % 50:04d}",
                "team_id": f"team-{i % 5}" if i % 3 else None, "user_id": None, "model": model,
                "deployment": f"{model}/openai/0", "provider": "openai", "route": "chat", "stream": stream,
                "status": rng.choice((500, 503, 429)) if failed else 200, "error": "unavailable" if failed else None,
                "error_message": None, "latency_ms": latency, "ttft_ms": latency / 4 if stream else None,
                "prompt_tokens": rng.randint(20, 2000), "completion_tokens": rng.randint(5, 800),
                "cached_tokens": 0, "cost_nano": rng.randint(1_000, 3_000_000), "cache_hit": rng.random() < 0.1,
                "attempts": 1, "client_ip": "127.0.0.1", "request_body": BODY, "response_body": BODY,
                "usage_estimated": False})
            if len(batch) == 5000:
                conn.execute(tables.request_log.insert(), batch)
                batch = []
        if batch:
            conn.execute(tables.request_log.insert(), batch)


def load(host: str, port: int, window: str) -> float:
    """Seconds to fetch everything the overview needs, as the page does (one keep-alive connection)."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    headers = {"authorization": f"Bearer {MASTER}"}
    started = time.perf_counter()
    for path in (*PAGE, f"/dashboard/api/overview?window={window}"):
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise SystemExit(f"{path} answered {resp.status}")
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def plan(db: Database, filters: dict[str, str]) -> str:
    """How the database reads the day's overview with ``filters``: which index, and whether it reads rows."""
    q, _ = overview_query(db.engine, WINDOWS["day"], time.time(), filters)
    sql = str(q.compile(db.engine, compile_kwargs={"literal_binds": True}))
    with db.engine.connect() as conn:
        if db.dialect == "sqlite":
            return "; ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
        return "; ".join(r[0].strip() for r in conn.exec_driver_sql("EXPLAIN " + sql)
                         if "Scan" in r[0] or "Filter" in r[0] or "Cond" in r[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--spread", choices=("day", "hour"), default="day")
    ap.add_argument("-n", type=int, default=7, help="loads per window")
    ap.add_argument("--pg", help="a PostgreSQL database URL (its request_log is emptied first)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="relaygate-dashboard-bench-") as tmp:
        url = args.pg or f"sqlite:///{os.path.join(tmp, 'relaygate.db')}"
        db = Database(url)
        db.migrate()
        with db.engine.begin() as conn:
            conn.execute(tables.request_log.delete())
        now = time.time()
        started = time.perf_counter()
        fill(db, args.rows, 86400.0 if args.spread == "day" else 3600.0, now)
        print(f"{args.rows:,} rows over the last {args.spread} in {db.dialect} "
              f"(written in {time.perf_counter() - started:.1f} s)")
        for name, window in WINDOWS.items():
            times, cpu = [], []
            for _ in range(args.n):
                t0, c0 = time.perf_counter(), time.process_time()
                data = overview(db.engine, window, time.time())
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            print(f"  aggregate query, {name:4}: median {statistics.median(times) * 1000:7.1f} ms, "
                  f"worst {max(times) * 1000:7.1f} ms, CPU {statistics.median(cpu) * 1000:6.1f} ms "
                  f"({data['totals']['requests']:,} rows in the window)")
        # the overview narrowed (dashboard/overview.py FILTERS): one model of four, one key of 50, one team of 5
        for filters in ({"model": "gpt-4o"}, {"key_id": "key_0007"}, {"team_id": "team-1"},
                        {"model": "gpt-4o", "team_id": "team-1"}):
            times, cpu = [], []
            for _ in range(args.n):
                t0, c0 = time.perf_counter(), time.process_time()
                data = overview(db.engine, WINDOWS["day"], time.time(), filters)
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            label = "&".join(f"{k}={v}" for k, v in filters.items())
            print(f"  aggregate query, day, {label}: median {statistics.median(times) * 1000:7.1f} ms, "
                  f"worst {max(times) * 1000:7.1f} ms, CPU {statistics.median(cpu) * 1000:6.1f} ms "
                  f"({data['totals']['requests']:,} rows)")
            print(f"    plan: {plan(db, filters)}")
        db.close()
        gw = GatewayThread({"auth": {"master_key": MASTER}, "database": {"url": url},
                            "models": [{"name": "demo", "deployments": [{"provider": "demo", "model": "demo"}]}]}).start()
        try:
            for name in WINDOWS:
                times, cpu = [], []
                for _ in range(args.n):
                    c0 = time.process_time()
                    times.append(load(gw.host, gw.port, name))
                    cpu.append(time.process_time() - c0)
                print(f"  page load (HTML, JS, CSS, uPlot, session, overview), {name:4}: median "
                      f"{statistics.median(times) * 1000:7.1f} ms, worst {max(times) * 1000:7.1f} ms, "
                      f"CPU {statistics.median(cpu) * 1000:6.1f} ms")
        finally:
            gw.stop()
        print(f"  load average {' '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
