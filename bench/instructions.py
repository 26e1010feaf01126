"""Instructions per request of relaygate config variants, counted by callgrind: a noise-free figure.

On a shared machine the timed benchmark (run.py) moves ±20 % from one round to the next, which hides
changes of a few percent. callgrind counts the instructions the gateway process executes in user space
(every thread; not the kernel, not cache misses), the same for the same code and load whatever else the
machine does. It runs the gateway ~50x slower, so the load is small: ``-n`` chat requests from ``-c``
clients, after a warm-up that is not counted.

    python bench/instructions.py                       # nolog, relaygate, full (SQLite), full-pg
    python bench/instructions.py -n 3000 --variant full=bench/variants/relaygate-full.yaml
    python bench/instructions.py --variant floor=bench/passthrough.py --variant lean=bench/passthrough_lean.py
    python bench/instructions.py --request chat-stream.json   # streams of 20 chunks instead
    python bench/instructions.py --tls                         # the fake upstream over HTTPS

A variant that names a ``.py`` file is a bare pass-through proxy script (``--upstream``, ``--port``), not a
relaygate config: the two floors, aiohttp's and relaygate's own client's. A variant may name the route and
the request its clients send, for another client dialect: ``NAME=CONFIG@PATH@REQUEST``, e.g.
``gem=bench/variants/relaygate-gemini.yaml@/v1beta/models/bench-model:generateContent@gemini.json``; a fourth
part ``@sigv4`` has the clients sign each request with SigV4 as boto3 does, with the AWS pair of the bench key
(``GET /bedrock/credentials``): a Bedrock route behind keys (``relaygate-bedrock-keys.yaml``), verified per request.

The first variant is the reference; each other gets the ratio reference / variant, which is what its
requests/s on one core would be relative to the reference if instructions were time. Needs valgrind
(Debian: ``apt-get install -y valgrind``), nginx with the echo module (the fake upstream), and for
full-pg the PostgreSQL and Redis servers.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    BENCH_DIR,
    REPO_DIR,
    Ctx,
    fill_config,
    free_port,
    http_ok,
    start_upstream,
    upstream_cert,
)

DEFAULT_VARIANTS = ["nolog=relaygate-nolog.yaml", "relaygate=relaygate.yaml", "full=relaygate-full.yaml",
                    "full-pg=relaygate-full-pg.yaml"]


BENCH_KEY = "sk-bench-5f0c2a9e71d43b86a1e07c9d2f4b6e38"  # the full variants' key


def sigv4_signer(url: str) -> Callable[[bytes, dict[str, str]], dict[str, str]]:
    """Headers signed with SigV4 (botocore's signer, as boto3's bedrock-runtime client signs) by the AWS pair of
    the bench key, which the gateway at ``url`` hands out."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    base = url.split("/", 3)
    with urllib.request.urlopen(urllib.request.Request(f"{base[0]}//{base[2]}/bedrock/credentials", headers={
            "authorization": f"Bearer {BENCH_KEY}"}), timeout=60) as r:
        pair = json.loads(r.read())
    auth = SigV4Auth(Credentials(pair["aws_access_key_id"], pair["aws_secret_access_key"]), "bedrock", "us-east-1")

    def sign(body: bytes, headers: dict[str, str]) -> dict[str, str]:
        req = AWSRequest("POST", url, data=body,
                         headers={k: v for k, v in headers.items() if k != "authorization"})
        auth.add_auth(req)
        return dict(req.headers.items())
    return sign


async def load(url: str, n: int, clients: int, request: str = "chat.json",
               extra_headers: dict[str, str] | None = None,
               sign: Callable[[bytes, dict[str, str]], dict[str, str]] | None = None) -> None:
    """``n`` chat requests (``requests/<request>``) from ``clients`` keep-alive clients; every answer must be a
    200, read whole (a stream to its end). With ``sign``, each request's headers are signed (SigV4) anew."""
    body = (BENCH_DIR / "requests" / request).read_bytes()
    headers = {"content-type": "application/json", "authorization": f"Bearer {BENCH_KEY}",
               **(extra_headers or {})}
    left = n
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def client() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with session.post(url, data=body, headers=sign(body, headers) if sign else headers) as r:
                    await r.read()
                    if r.status != 200:
                        raise SystemExit(f"{url}: status {r.status}")
        await asyncio.gather(*(client() for _ in range(clients)))


def counted(out: Path) -> dict[str, int]:
    """Instructions per thread in the dump callgrind wrote on request (not the one at exit)."""
    per: dict[str, int] = {}
    for f in sorted(glob.glob(f"{out}*")):
        text = Path(f).read_text(errors="replace")
        if "Trigger: dump" not in text[:2000]:
            continue
        m = re.search(r"^summary: (\d+)", text, re.M)
        if m:
            per[f.rsplit("-", 1)[-1]] = int(m.group(1))
    return per


FLUSH_INTERVAL = 5.0  # the request log's flush_interval in the instrumented gateway (see below)


SLOWDOWN = 50  # about how much slower the gateway runs under callgrind


def slowed_config(path: Path) -> float:
    """Under callgrind the gateway runs ~50x slower, so with the default 0.5 s flush the log writer would
    write batches of ~50 rows, paying per-batch costs (transaction, statements) that a gateway at full
    speed spreads over full batches of ``batch_size`` (500). The instrumented config flushes every
    FLUSH_INTERVAL s instead, so batches fill as in the timed benchmark; the trace exporter's batch_delay is
    stretched ×SLOWDOWN for the same reason (at full speed its batches are full: 512 spans). The wall-clock bounds on Redis and
    database waits (50 ms, 1 s) and the server's header, body and keep-alive timeouts are stretched by the
    same factor: at full speed they are never reached, under callgrind (on a loaded machine) a first key
    lookup alone takes longer, and a client cut mid-load fails the run. Returns the flush interval."""
    data = yaml.safe_load(path.read_text()) or {}
    state = data.get("state") or {}
    if state.get("redis_url"):
        state.setdefault("redis_timeout", 0.05 * SLOWDOWN)
        data["state"] = state
    server = data.get("server") or {}
    for name, default in (("header_timeout", 10.0), ("body_timeout", 30.0), ("keepalive_timeout", 5.0)):
        server.setdefault(name, default * SLOWDOWN)  # a loaded machine under callgrind must not cut clients
    data["server"] = server
    database = data.setdefault("database", {}) or {}
    database.setdefault("lookup_timeout", 1.0 * SLOWDOWN)
    data["database"] = database
    log = data.setdefault("request_log", {}) or {}
    logged = log.get("enabled", True) is not False
    if logged:
        log["flush_interval"] = FLUSH_INTERVAL
    data["request_log"] = log
    tracing = data.get("tracing") or {}
    if tracing.get("endpoint"):  # like the log's batches: spans exported in batches as full as at full speed
        tracing["batch_delay"] = min(60.0, float(tracing.get("batch_delay", 2.0)) * SLOWDOWN)
        data["tracing"] = tracing
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return FLUSH_INTERVAL if logged else 0.0


def code_dir(config: Path) -> Path:
    """The checkout whose code a variant runs: the one that holds its config or script (a config in another
    worktree measures that worktree's code, so a branch and main compare in one run), else this one."""
    for parent in config.resolve().parents:
        if (parent / "relaygate" / "__init__.py").is_file():
            return parent
    return REPO_DIR


def measure(ctx: Ctx, name: str, config: Path, n: int, clients: int, request: str = "chat.json",
            headers: dict[str, str] | None = None, path: str = "/v1/chat/completions",
            sigv4: bool = False) -> tuple[float, dict[str, float]]:
    port = free_port()
    if config.suffix == ".py":  # a pass-through proxy script
        settle = 1.0
        target = [str(config.resolve()), "--upstream", ctx.upstream + "/v1"]
    else:
        cfg = fill_config(ctx, config, name)
        settle = slowed_config(cfg) + 1.5  # until the log writer wrote what is queued
        target = ["-m", "relaygate", "serve", "--config", str(cfg)]
    out = ctx.run_dir / f"callgrind-{name}.out"
    env = dict(os.environ, PYTHONPATH=str(code_dir(config)))
    if ctx.upstream.startswith("https:"):  # the TLS fake upstream's certificate, trusted as ssl's default
        env["SSL_CERT_FILE"] = str(upstream_cert(ctx))
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
            f"--callgrind-out-file={out}", sys.executable, *target, "--host", "127.0.0.1", "--port", str(port)]
    with open(ctx.run_dir / f"{name}.log", "wb") as log:
        proc = subprocess.Popen(argv, cwd=ctx.run_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not http_ok(f"http://127.0.0.1:{port}/health", timeout=2):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name} did not start; see {ctx.run_dir / (name + '.log')}")
            time.sleep(0.5)
        url = f"http://127.0.0.1:{port}{path}"
        sign = sigv4_signer(url) if sigv4 else None
        asyncio.run(load(url, max(200, n // 5), clients, request, headers, sign))  # warm-up: pools, caches, imports
        time.sleep(settle)  # the warm-up's log rows are written before counting starts
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
        asyncio.run(load(url, n, clients, request, headers, sign))
        time.sleep(settle)  # the log writer's last batch lands
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    per = {t: v / n for t, v in counted(out).items() if v}
    return sum(per.values()), per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=CONFIG")
    ap.add_argument("-n", type=int, default=1500, help="requests counted per variant")
    ap.add_argument("-c", type=int, default=16, help="concurrent clients")
    ap.add_argument("--repeat", type=int, default=1, help="measure every variant this many times, in turn")
    ap.add_argument("--request", default="chat.json", metavar="FILE",
                    help="the request body, from bench/requests (chat-stream.json: the 20-chunk stream)")
    ap.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                    help="a request header every variant is sent (x-relaygate-cache:refresh: every request a miss)")
    ap.add_argument("--keep", action="store_true", help="keep the callgrind dumps (for callgrind_annotate)")
    ap.add_argument("--tls", action="store_true",
                    help="the fake upstream over HTTPS (https://localhost, a self-signed certificate the targets trust)")
    args = ap.parse_args()
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        raise SystemExit("needs valgrind: apt-get install -y valgrind")
    headers = dict((h.split(":", 1)[0].strip(), h.split(":", 1)[1].strip()) for h in args.header if ":" in h)
    variants = args.variant or [f"{v.split('=')[0]}={BENCH_DIR / 'variants' / v.split('=')[1]}"
                                for v in DEFAULT_VARIANTS]
    run_dir = Path(tempfile.mkdtemp(prefix="relaygate-instr-"))
    up, tls_up = free_port(), free_port()
    ctx = Ctx(run_dir=run_dir, upstream=f"http://127.0.0.1:{up}", pin=False)
    upstream = start_upstream(ctx, up, tls_port=tls_up if args.tls else None)
    if args.tls:
        ctx.upstream = f"https://localhost:{tls_up}"
    counts: dict[str, list[float]] = {}
    try:
        for r in range(args.repeat):  # variants in turn, so that each repeat sees the same conditions
            for spec in variants:
                name, _, spec_rest = spec.partition("=")
                path, route, request, auth = (spec_rest.split("@") + ["", "", ""])[:4]
                total, per = measure(ctx, name if r == 0 else f"{name}-{r}", Path(path), args.n, args.c,
                                     request or args.request, headers, route or "/v1/chat/completions",
                                     auth == "sigv4")
                counts.setdefault(name, []).append(total)
                threads = ", ".join(f"thread {t}: {v / 1000:.1f}k" for t, v in per.items())
                print(f"  {name}: {total / 1000:.1f}k instructions per request ({threads})", file=sys.stderr,
                      flush=True)
    finally:
        upstream.stop()
    names = list(counts)
    ref_name = names[0]
    ref = statistics.mean(counts[ref_name])
    print(f"\ninstructions per request (callgrind, {args.n} requests ({args.request} unless the variant names its "
          f"own) from {args.c} clients, mean of "
          f"{args.repeat} run(s); reference: {ref_name}{'; HTTPS upstream' if args.tls else ''})\n")
    print(f"{'variant':<14} {'instructions':>13} {'ratio ' + ref_name + '/variant':>24}  runs")
    for name in names:
        mean = statistics.mean(counts[name])
        runs = " ".join(f"{v / 1000:.1f}k" for v in counts[name])
        print(f"{name:<14} {mean / 1000:>12.1f}k {ref / mean:>23.3f}x  {runs}")
    if args.keep:
        print(f"\ncallgrind dumps: {run_dir}/callgrind-*.out*")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
