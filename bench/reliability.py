"""relaygate's reliability figure: three deployments, one failing 30% of calls, one down; how much gets through?

    python bench/reliability.py                       # 10,000 requests at c=50; ~1 minute
    python bench/reliability.py --requests 2000 --json out.json

Starts three OpenAI emulators (``relaygate emulate openai``) and relaygate (``relaygate serve``) as
processes on 127.0.0.1. The model ``m`` has three deployments: ``healthy``, ``flaky`` (FaultPlan: HTTP 500
on 30% of calls) and ``down`` (a closed port: connection refused). Every setting is relaygate's default
(round robin; each deployment tried at most once per call; breaker: 5 failures in a row) except the
breaker's cool-down, shortened (``--cooldown``) so that half-open probes happen during the run.

It sends the same load directly to a healthy emulator, through relaygate to a lone healthy deployment
(``clean``: the gateway's own cost), then to ``m``, and reports: the share of requests that succeeded,
latency p50/p99 and the p99 relaygate adds (over direct, and over ``clean``), and the calls relaygate sent to
the ``down`` deployment after its breaker had opened (read from ``GET /health/providers``, polled every
50 ms while the load runs, so a call may be counted on either side of the opening within that interval).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-reliability-0123456789"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}
TIME_LIMIT = 600.0  # seconds for the whole run, whatever happens


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = open(log, "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "relaygate", *argv], stdout=out, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)


async def wait_up(session: aiohttp.ClientSession, url: str, limit: float = 20.0) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            async with session.get(url) as r:
                if r.status < 500:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up within {limit:g} s")


def config(healthy: int, flaky: int, down: int, cooldown: float) -> dict[str, Any]:
    def dep(name: str, port: int) -> dict[str, Any]:
        return {"name": name, "provider": "openai", "model": "gpt-4o-mini", "api_base": f"http://127.0.0.1:{port}/v1",
                "api_key": KEY, "timeout": 10}

    return {"models": [{"name": "m", "breaker": {"cooldown": cooldown},
                        "deployments": [dep("healthy", healthy), dep("flaky", flaky), dep("down", down)]},
                       # the same gateway with nothing failing: what relaygate adds by itself
                       {"name": "clean", "deployments": [dep("clean", healthy)]}]}


async def load(session: aiohttp.ClientSession, url: str, body: dict[str, Any], n: int,
               concurrency: int) -> dict[str, Any]:
    """``n`` POSTs, ``concurrency`` at a time; latency of each, status counts, attempts header counts."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    attempts: dict[str, int] = {}
    payload = json.dumps(body).encode()
    left = iter(range(n))

    async def worker() -> None:
        for _ in left:
            t = time.perf_counter()
            try:
                async with session.post(url, data=payload, headers={"content-type": "application/json",
                                                                    "authorization": f"Bearer {KEY}"}) as r:
                    await r.read()
                    status = str(r.status)
                    a = r.headers.get("x-relaygate-attempts")
                    if a:
                        attempts[a] = attempts.get(a, 0) + 1
            except (aiohttp.ClientError, TimeoutError) as e:
                status = type(e).__name__
            latencies.append(time.perf_counter() - t)
            statuses[status] = statuses.get(status, 0) + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    latencies.sort()
    return {"requests": n, "seconds": round(elapsed, 2), "rate": round(n / elapsed, 1),
            "p50_ms": round(pct(latencies, 0.50) * 1000, 2), "p99_ms": round(pct(latencies, 0.99) * 1000, 2),
            "statuses": statuses, "attempts": dict(sorted(attempts.items()))}


def pct(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))] if sorted_values else 0.0


async def watch_down(session: aiohttp.ClientSession, url: str, stop: asyncio.Event) -> dict[str, Any]:
    """Poll /health/providers: calls to ``down`` when its breaker was first seen open, and at the end."""
    seen: dict[str, Any] = {"calls_when_opened": None, "opened_at_s": None, "states": []}
    t0 = time.monotonic()
    while not stop.is_set():
        try:
            async with session.get(url) as r:
                report = {d["deployment"]: d for d in (await r.json())["deployments"]}
        except (aiohttp.ClientError, TimeoutError):
            report = {}
        down = report.get("down")
        if down is not None:
            state = down["breaker"]["state"]
            if not seen["states"] or seen["states"][-1] != state:
                seen["states"].append(state)
            if state == "open" and seen["calls_when_opened"] is None:
                seen["calls_when_opened"] = down["requests"]
                seen["opened_at_s"] = round(time.monotonic() - t0, 2)
        try:
            await asyncio.wait_for(stop.wait(), 0.05)
        except TimeoutError:
            pass
    return seen


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    ports = {name: free_port() for name in ("healthy", "flaky", "direct", "down", "gateway")}
    procs = [spawn(["emulate", "openai", "--port", str(ports[n]), "--api-key", KEY], tmp / f"{n}.log")
             for n in ("healthy", "flaky", "direct")]
    cfg_path = tmp / "relaygate.yaml"
    cfg_path.write_text(json.dumps(config(ports["healthy"], ports["flaky"], ports["down"], args.cooldown)))
    procs.append(spawn(["serve", "--config", str(cfg_path), "--port", str(ports["gateway"])], tmp / "gateway.log"))
    gw = f"http://127.0.0.1:{ports['gateway']}"
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=args.concurrency + 4)
    try:
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            for n in ("healthy", "flaky", "direct"):
                await wait_up(session, f"http://127.0.0.1:{ports[n]}/_emulator/requests")
            await wait_up(session, gw + "/health")
            async with session.post(f"http://127.0.0.1:{ports['flaky']}/_emulator/faults",
                                    json={"status": 500, "rate": 0.3}) as r:
                assert r.status == 200, await r.text()
            direct_url = f"http://127.0.0.1:{ports['direct']}/v1/chat/completions"
            await load(session, direct_url, BODY, 500, args.concurrency)  # warm-up
            direct = await load(session, direct_url, BODY, args.requests, args.concurrency)
            await load(session, gw + "/v1/chat/completions", {**BODY, "model": "clean"}, 500, args.concurrency)
            clean = await load(session, gw + "/v1/chat/completions", {**BODY, "model": "clean"}, args.requests,
                               args.concurrency)
            stop = asyncio.Event()
            watcher = asyncio.ensure_future(watch_down(session, gw + "/health/providers", stop))
            through = await load(session, gw + "/v1/chat/completions", {**BODY, "model": "m"}, args.requests,
                                 args.concurrency)
            stop.set()
            seen = await watcher
            async with session.get(gw + "/health/providers") as r:
                final = {d["deployment"]: d for d in (await r.json())["deployments"]}
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
    ok = through["statuses"].get("200", 0)
    down_total = final["down"]["requests"]
    opened_at = seen["calls_when_opened"]
    return {
        "requests": args.requests, "concurrency": args.concurrency, "cooldown_s": args.cooldown,
        "success_share": round(ok / args.requests, 6),
        "direct": direct, "relaygate": through, "relaygate_no_faults": clean,
        "added_p50_ms": round(through["p50_ms"] - direct["p50_ms"], 2),
        "added_p99_ms": round(through["p99_ms"] - direct["p99_ms"], 2),
        "added_p99_ms_by_the_faults": round(through["p99_ms"] - clean["p99_ms"], 2),
        "down": {"calls_total": down_total, "calls_before_open": opened_at,
                 "calls_after_open": None if opened_at is None else down_total - opened_at,
                 "opened_after_s": seen["opened_at_s"], "breaker_states_seen": seen["states"]},
        "flaky": {"calls": final["flaky"]["requests"], "failures": final["flaky"]["failures"],
                  "breaker": final["flaky"]["breaker"]["state"]},
        "healthy": {"calls": final["healthy"]["requests"], "failures": final["healthy"]["failures"]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--cooldown", type=float, default=5.0, help="breaker cool-down in seconds")
    parser.add_argument("--json", help="write the figures to this file too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="relaygate-reliability-") as d:
        result = asyncio.run(asyncio.wait_for(run(args, Path(d)), TIME_LIMIT))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    print(f"\nsucceeded: {result['success_share']:.4%} of {args.requests}; added p99: {result['added_p99_ms']} ms; "
          f"calls to the down deployment after its breaker opened: {result['down']['calls_after_open']}",
          file=sys.stderr)
    return 0 if result["success_share"] == 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
