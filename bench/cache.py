"""What the response cache buys (issue 21, "Speed"): a hit's added latency and rate against the pass-through's,
and on a replayed workload with 50 % repeats, the share of calls that still go upstream and the USD saved.

Cells, on one fake upstream (nginx, core 0) and two gateways (core 1), all up at once:
  direct      the upstream itself (what "added" is measured from)
  passthrough relaygate, request log off (variants/relaygate-nolog.yaml)
  hit         relaygate with the cache on (variants/relaygate-cache.yaml), the bench's request warmed first,
              so every request is a hit
c=1: one keep-alive connection per cell, one request of each cell in turn (responses.py --interleaved's
pattern), so the machine's drift hits every cell alike; added p50 = the cell's p50 minus direct's.
c=64: bench/loadgen.py, rounds in the order passthrough, hit, hit, passthrough… (the median of the rounds'
ratios). The replay: ``--replay`` chat requests, one at a time, to the cache gateway; a request repeats an
earlier one (same body) with probability ``--repeat``, else asks something new. Upstream calls and USD come
from the gateway's /metrics (cache misses, cost, saved) and are checked against each reply's
``x-relaygate-cache`` header.

    python bench/cache.py                          # ~30 s
    python bench/cache.py --interleaved 2000 --seconds 5 --rounds 3
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BENCH_DIR, Ctx, Load, Target, free_port, relaygate_target, run_load, start_upstream  # noqa: E402

CHAT = "/v1/chat/completions"


def workload(n: int, repeat: float, seed: int = 21) -> list[int]:
    """Question numbers for ``n`` requests: round(n * repeat) of them (never the first) repeat a question asked
    earlier, picked at random; the others are new questions, numbered in order of first asking."""
    rng = random.Random(seed)
    repeats = set(rng.sample(range(1, n), min(n - 1, round(n * repeat)))) if n > 1 else set()
    out: list[int] = []
    new = 0
    for i in range(n):
        if i in repeats:
            out.append(out[rng.randrange(len(out))])
        else:
            out.append(new)
            new += 1
    return out


def question(base: dict[str, object], k: int) -> bytes:
    body = orjson.loads(orjson.dumps(base))
    body["messages"][-1]["content"] += f" (question {k})"
    return orjson.dumps(body)


class Conn:
    """One keep-alive HTTP/1.1 connection that POSTs a body and reads the whole answer."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        self.buf = b""

    def post(self, body: bytes) -> tuple[int, bytes, bytes]:
        """(status, head, body) of the answer."""
        self.sock.sendall(f"{self.head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        while b"\r\n\r\n" not in self.buf:
            self._recv()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lower = head.lower()
        m = re.search(rb"\r\ncontent-length: *(\d+)", lower)
        if m:
            n = int(m.group(1))
            while len(self.buf) < n:
                self._recv()
            out, self.buf = self.buf[:n], self.buf[n:]
        else:  # chunked
            if b"transfer-encoding: chunked" not in lower:
                raise SystemExit(f"an answer with neither length nor chunks: {head!r}")
            while b"\r\n0\r\n\r\n" not in b"\r\n" + self.buf:
                self._recv()
            end = (b"\r\n" + self.buf).index(b"\r\n0\r\n\r\n") + 5  # "0" sits at that index of buf
            out, self.buf = self.buf[:end], self.buf[end:]
        return int(head.split(b" ", 2)[1]), head, out

    def _recv(self) -> None:
        piece = self.sock.recv(65536)
        if not piece:
            raise SystemExit("the server closed the connection")
        self.buf += piece

    def close(self) -> None:
        self.sock.close()


def interleaved(ports: dict[str, int], body: bytes, n: int) -> dict[str, list[float]]:
    """Each cell's latency (ms) of a whole chat answer, one request of each cell in turn, ``n`` times."""
    conns = {cell: Conn(port, CHAT) for cell, port in ports.items()}
    times: dict[str, list[float]] = {cell: [] for cell in conns}
    try:
        for r in range(n + 50):  # the first 50: warm-up (the first stores the hit cell's entry)
            for cell, conn in conns.items():
                t0 = time.perf_counter()
                status, head, _ = conn.post(body)
                dt = (time.perf_counter() - t0) * 1000
                if status != 200:
                    raise SystemExit(f"{cell}: HTTP {status}")
                if cell == "hit" and r and b"x-relaygate-cache: hit" not in head.lower():
                    raise SystemExit(f"hit cell: not a hit: {head!r}")
                if r >= 50:
                    times[cell].append(dt)
    finally:
        for conn in conns.values():
            conn.close()
    return times


def metrics(port: int) -> dict[str, float]:
    """The sums of the cache and cost counters on the gateway's /metrics (open: the bench has no master key)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {"relaygate_cache_misses_total": 0.0, "relaygate_cache_hits_total": 0.0,
           "relaygate_cache_saved_usd_total": 0.0, "relaygate_cost_usd_total": 0.0}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in out:
            out[name] += float(line.rsplit(" ", 1)[1])
    return out


def replay(port: int, base: dict[str, object], n: int, repeat: float) -> dict[str, float]:
    plan = workload(n, repeat)
    before = metrics(port)
    conn = Conn(port, CHAT)
    seen_misses = 0
    try:
        for k in plan:
            status, head, _ = conn.post(question(base, k))
            if status != 200:
                raise SystemExit(f"replay: HTTP {status}")
            seen_misses += b"x-relaygate-cache: hit" not in head.lower()
    finally:
        conn.close()
    after = metrics(port)
    d = {k: after[k] - before[k] for k in after}
    return {"requests": n, "distinct": len(set(plan)), "misses_seen": seen_misses,
            "upstream_calls": d["relaygate_cache_misses_total"], "hits": d["relaygate_cache_hits_total"],
            "spent_usd": d["relaygate_cost_usd_total"], "saved_usd": d["relaygate_cache_saved_usd_total"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interleaved", type=int, default=1500, metavar="N", help="c=1 requests per cell")
    ap.add_argument("--rounds", type=int, default=2, help="c=64 rounds per gateway (alternating order)")
    ap.add_argument("--seconds", type=float, default=3.0, help="each c=64 measurement")
    ap.add_argument("--replay", type=int, default=1000, help="requests in the replayed workload")
    ap.add_argument("--repeat", type=float, default=0.5, help="share of the replay's requests that repeat one")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (configs, logs)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the load and the targets to cores")
    args = ap.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="relaygate-cache-"))
    up = free_port()
    ctx = Ctx(run_dir=run_dir, upstream=f"http://127.0.0.1:{up}", pin=not args.no_pin, use_wrk=False)
    body = (BENCH_DIR / "requests" / "chat.json").read_bytes().strip()
    targets: dict[str, Target] = {}
    t_start = time.perf_counter()
    try:
        ctx.procs.append(start_upstream(ctx, up))
        for cell, variant in (("passthrough", "relaygate-nolog.yaml"), ("hit", "relaygate-cache.yaml")):
            t = relaygate_target(cell, BENCH_DIR / "variants" / variant)
            t.port = free_port()
            t.proc = t.start(ctx, t.port)
            assert t.proc is not None
            ctx.procs.append(t.proc)
            targets[cell] = t
        ports = {"direct": up, **{cell: t.port for cell, t in targets.items()}}
        ctx.log("c=1, interleaved …")
        lat = interleaved(ports, body, args.interleaved)
        p50 = {cell: statistics.median(v) for cell, v in lat.items()}
        rates: dict[str, list[float]] = {"passthrough": [], "hit": []}
        cpu: dict[str, list[float]] = {"passthrough": [], "hit": []}  # the gateway's CPU µs per request
        misses_before = metrics(targets["hit"].port)["relaygate_cache_misses_total"]
        for r in range(args.rounds):
            for cell in ("passthrough", "hit") if r % 2 == 0 else ("hit", "passthrough"):
                t = targets[cell]
                ctx.current = t.proc
                url = f"http://127.0.0.1:{t.port}{CHAT}"
                run_load(ctx, url, Load("chat.json", 64, 1), 1)  # the same load for 1 s first
                res = run_load(ctx, url, Load("chat.json", 64, args.seconds), args.seconds)
                if res["errors"]:
                    raise SystemExit(f"{cell} c=64: {res['errors']} errors; see {run_dir}")
                rates[cell].append(res["rate"])
                cpu[cell].append(res.get("cpu_us", float("nan")))
                ctx.log(f"round {r + 1} {cell} c=64: {res['rate']:.0f} req/s (others' CPU {res['foreign_pct']:.0f} %)")
        c64_misses = metrics(targets["hit"].port)["relaygate_cache_misses_total"] - misses_before
        ctx.log("replay …")
        rep = replay(targets["hit"].port, orjson.loads(body), args.replay, args.repeat)
    finally:
        for p in reversed(ctx.procs):
            p.stop()
    elapsed = time.perf_counter() - t_start
    added = {cell: p50[cell] - p50["direct"] for cell in ("passthrough", "hit")}
    ratios = [h / p for h, p in zip(rates["hit"], rates["passthrough"], strict=True)]
    print(f"c=1, {args.interleaved} interleaved requests per cell: p50 direct {p50['direct']:.3f} ms")
    print(f"{'cell':12} {'p50 ms':>8} {'added p50 ms':>13}")
    for cell in ("passthrough", "hit"):
        print(f"{cell:12} {p50[cell]:8.3f} {added[cell]:13.3f}")
    verdict = "PASS" if added["hit"] <= added["passthrough"] / 2 else "FAIL"
    print(f"hit / passthrough added p50: {added['hit'] / added['passthrough']:.2f}x: {verdict} (<= 0.5x)")
    print(f"c=64 req/s per round: passthrough {', '.join(f'{x:.0f}' for x in rates['passthrough'])}; "
          f"hit {', '.join(f'{x:.0f}' for x in rates['hit'])} (cache misses meanwhile: {c64_misses:.0f})")
    print(f"gateway CPU per request, median of rounds: passthrough {statistics.median(cpu['passthrough']):.0f} µs, "
          f"hit {statistics.median(cpu['hit']):.0f} µs")
    med = statistics.median(ratios)
    print(f"hit / passthrough req/s, median of rounds ({', '.join(f'{x:.2f}' for x in ratios)}): {med:.2f}x: "
          f"{'PASS' if med >= 2 else 'FAIL'} (>= 2x)")
    n = rep["requests"]
    print(f"replay: {n:.0f} requests, {args.repeat:.0%} repeats ({rep['distinct']:.0f} distinct), one at a time")
    print(f"  upstream calls {rep['upstream_calls']:.0f} ({rep['upstream_calls'] / n:.1%} of requests; "
          f"non-hit replies seen {rep['misses_seen']:.0f}), hits {rep['hits']:.0f}")
    total = rep["spent_usd"] + rep["saved_usd"]
    print(f"  USD spent {rep['spent_usd']:.6f}, saved {rep['saved_usd']:.6f} "
          f"({rep['saved_usd'] / total:.1%} of {total:.6f} without the cache)" if total else "  no cost")
    print(f"run took {elapsed:.0f} s" + (f"; run directory {run_dir}" if args.keep else ""))
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
