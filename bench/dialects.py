"""What a client dialect costs: c=1 latency of each cell of the dialect grid against the fake upstream.

A foreign client (Gemini, Cohere, Bedrock) is served two ways: by a deployment of its own kind (the same-dialect
cell: its body relayed untouched) and by an OpenAI-compatible one (the translated cell: its request
translated to chat and the answer back). This runs both, and OpenAI chat's passthrough for reference, with
one client at a time, in rounds that alternate the order, and prints the p50 of each and what the
translated cell adds over the same-dialect one (the target: at most 0.3 ms).

    python bench/dialects.py                    # 3 rounds of 3 s per cell
    python bench/dialects.py --rounds 5 --seconds 5

Needs nginx with the echo module (the fake upstream), like run.py; the load is bench/loadgen.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BENCH_DIR, Ctx, Load, free_port, relaygate_target, run_load, start_upstream  # noqa: E402

GEMINI_PATH = "/v1beta/models/bench-model:generateContent"
BEDROCK_PATH = "/model/bench-model/converse"  # an open gateway: the client need not sign
# (cell, target, path, request body in bench/requests)
CELLS = [
    ("openai chat -> openai (passthrough)", "openai", "/v1/chat/completions", "chat.json"),
    ("gemini -> gemini (same dialect)", "gemini", GEMINI_PATH, "gemini.json"),
    ("gemini -> openai (translated)", "openai", GEMINI_PATH, "gemini.json"),
    ("cohere -> cohere (same dialect)", "cohere", "/v2/chat", "cohere.json"),
    ("cohere -> openai (translated)", "openai", "/v2/chat", "cohere.json"),
    ("bedrock -> bedrock (same dialect)", "bedrock", BEDROCK_PATH, "converse.json"),
    ("bedrock -> openai (translated)", "openai", BEDROCK_PATH, "converse.json"),
]
TARGETS = {"openai": "relaygate-nolog.yaml", "gemini": "relaygate-gemini.yaml", "cohere": "relaygate-cohere.yaml",
           "bedrock": "relaygate-bedrock.yaml"}
PAIRS = [("gemini", "gemini -> gemini (same dialect)", "gemini -> openai (translated)"),
         ("cohere", "cohere -> cohere (same dialect)", "cohere -> openai (translated)"),
         ("bedrock", "bedrock -> bedrock (same dialect)", "bedrock -> openai (translated)")]
LIMIT_MS = 0.3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--no-pin", action="store_true", help="do not pin the load and the targets to cores")
    args = ap.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="relaygate-dialects-"))
    up = free_port()
    ctx = Ctx(run_dir=run_dir, upstream=f"http://127.0.0.1:{up}", pin=not args.no_pin, use_wrk=False)
    ctx.procs.append(start_upstream(ctx, up))
    targets = {}
    for name, config in TARGETS.items():
        t = relaygate_target(name, BENCH_DIR / "variants" / config)
        t.port = free_port()
        t.proc = t.start(ctx, t.port)
        assert t.proc is not None
        ctx.procs.append(t.proc)
        targets[name] = t
    p50: dict[str, list[float]] = {cell: [] for cell, *_ in CELLS}
    try:
        for _, target, path, body in CELLS:  # warm-up: pools, lazy imports
            run_load(ctx, f"http://127.0.0.1:{targets[target].port}{path}", Load(body, 1, 1), 1)
        for r in range(args.rounds):
            for cell, target, path, body in (CELLS if r % 2 == 0 else CELLS[::-1]):
                t = targets[target]
                ctx.current = t.proc
                res = run_load(ctx, f"http://127.0.0.1:{t.port}{path}", Load(body, 1, args.seconds), args.seconds)
                if res["errors"]:
                    raise SystemExit(f"{cell}: {res['errors']} errors; see {run_dir}")
                p50[cell].append(res["p50_ms"])
                ctx.log(f"round {r + 1} {cell}: p50 {res['p50_ms']:.3f} ms")
    finally:
        for p in reversed(ctx.procs):
            p.stop()
    best = {cell: min(v) for cell, v in p50.items()}
    print(f"{'cell (c=1, whole answers)':40} {'p50 ms (best round)':>20} {'median round':>13}")
    for cell, _, _, _ in CELLS:
        print(f"{cell:40} {best[cell]:20.3f} {statistics.median(p50[cell]):13.3f}")
    for _, same, translated in PAIRS:
        added = best[translated] - best[same]
        verdict = "PASS" if added <= LIMIT_MS else "FAIL"
        print(f"{translated} adds {added:+.3f} ms p50 over {same} ({best[translated] / best[same]:.2f}x): "
              f"{verdict} (<= {LIMIT_MS} ms)")


if __name__ == "__main__":
    main()
