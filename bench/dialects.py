"""What a client dialect costs: c=1 latency of each cell of the dialect grid against the fake upstream.

Every client dialect (OpenAI chat, OpenAI Responses, Anthropic Messages, Gemini, Cohere v2, Bedrock Converse)
is sent to a deployment of every upstream kind the fake upstream answers (OpenAI-compatible chat, OpenAI
Responses-native (``responses_only``), Anthropic, Gemini, Cohere, Bedrock Converse): the same-dialect cell relays
the client's body untouched, every other cell translates the request to that kind and the answer back. An
Anthropic client's request to Claude on Bedrock goes as InvokeModel's body (Anthropic's, relayed), not as
Converse. This runs the cells with one client at a time, in rounds that alternate the order, and prints the p50
of each (best round) and what each translated cell adds over its row's same-dialect cell (issue 26's target: at
most 0.3 ms).

    python bench/dialects.py                    # every cell, 3 rounds of 3 s each
    python bench/dialects.py --rounds 5 --seconds 5
    python bench/dialects.py --clients gemini,cohere,bedrock --upstreams openai,gemini,cohere,bedrock
    python bench/dialects.py --upstreams responses   # the Responses-native column (and each row's reference)

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

# client dialect: (route on relaygate, request body in bench/requests, its same-dialect upstream kind)
CLIENTS = {
    "openai": ("/v1/chat/completions", "chat.json", "openai"),
    "responses": ("/v1/responses", "responses.json", "responses"),  # store: false, as a stateless client sends it
    "anthropic": ("/v1/messages", "messages.json", "anthropic"),
    "gemini": ("/v1beta/models/bench-model:generateContent", "gemini.json", "gemini"),
    "cohere": ("/v2/chat", "cohere.json", "cohere"),
    "bedrock": ("/model/bench-model/converse", "converse.json", "bedrock"),  # an open gateway: no signature
}
# upstream kind: the config whose bench-model a deployment of that kind on the fake upstream serves
# (responses: an OpenAI deployment marked responses_only, whose upstream is the fake upstream's /v1/responses)
UPSTREAMS = {"openai": "relaygate-nolog.yaml", "responses": "relaygate-responses.yaml",
             "anthropic": "relaygate-anthropic.yaml", "gemini": "relaygate-gemini.yaml",
             "cohere": "relaygate-cohere.yaml", "bedrock": "relaygate-bedrock.yaml"}
LIMIT_MS = 0.3


def reference(client: str) -> tuple[str, str]:
    """The cell a row's translated cells are set against: its same-dialect cell."""
    return client, CLIENTS[client][2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--clients", default=",".join(CLIENTS), help="rows, comma-separated")
    ap.add_argument("--upstreams", default=",".join(UPSTREAMS), help="columns, comma-separated")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the load and the targets to cores")
    args = ap.parse_args()
    clients = args.clients.split(",")
    kinds = args.upstreams.split(",")
    cells = [(c, u) for c in clients for u in kinds]
    cells += [ref for ref in dict.fromkeys(reference(c) for c in clients) if ref not in cells]
    run_dir = Path(tempfile.mkdtemp(prefix="relaygate-dialects-"))
    up = free_port()
    ctx = Ctx(run_dir=run_dir, upstream=f"http://127.0.0.1:{up}", pin=not args.no_pin, use_wrk=False)
    ctx.procs.append(start_upstream(ctx, up))
    targets = {}
    for kind in dict.fromkeys(u for _, u in cells):
        t = relaygate_target(kind, BENCH_DIR / "variants" / UPSTREAMS[kind])
        t.port = free_port()
        t.proc = t.start(ctx, t.port)
        assert t.proc is not None
        ctx.procs.append(t.proc)
        targets[kind] = t
    p50: dict[tuple[str, str], list[float]] = {cell: [] for cell in cells}
    foreign: list[float] = []
    try:
        for client, kind in cells:  # warm-up: pools, lazy imports
            run_load(ctx, f"http://127.0.0.1:{targets[kind].port}{CLIENTS[client][0]}", Load(CLIENTS[client][1], 1, 1), 1)
        for r in range(args.rounds):
            for client, kind in (cells if r % 2 == 0 else cells[::-1]):
                t = targets[kind]
                ctx.current = t.proc
                path, body, _ = CLIENTS[client]
                res = run_load(ctx, f"http://127.0.0.1:{t.port}{path}", Load(body, 1, args.seconds), args.seconds)
                if res["errors"]:
                    raise SystemExit(f"{client} -> {kind}: {res['errors']} errors; see {run_dir}")
                p50[(client, kind)].append(res["p50_ms"])
                foreign.append(res["foreign_pct"])
                ctx.log(f"round {r + 1} {client} -> {kind}: p50 {res['p50_ms']:.3f} ms")
    finally:
        for p in reversed(ctx.procs):
            p.stop()
    best = {cell: min(v) for cell, v in p50.items()}
    print(f"c=1, whole answers: p50 in ms of the best of {args.rounds} rounds of {args.seconds:g} s (median round); "
          f"other processes' CPU during the loads: median {statistics.median(foreign):.0f} %, "
          f"max {max(foreign):.0f} % of a core")
    print(f"{'client / upstream':18}" + "".join(f"{k:>18}" for k in kinds))
    for client in clients:
        row = [f"{best[(client, k)]:.3f} ({statistics.median(p50[(client, k)]):.3f})" if (client, k) in best
               else "-" for k in kinds]
        print(f"{client:18}" + "".join(f"{v:>18}" for v in row))
    print(f"\nadded p50 over the row's same-dialect cell (target <= {LIMIT_MS} ms):")
    failed = 0
    for client, kind in cells:
        ref = reference(client)
        if client not in clients or (client, kind) == ref:
            continue
        added = best[(client, kind)] - best[ref]
        failed += added > LIMIT_MS
        print(f"  {client} -> {kind}: {added:+.3f} ms over {ref[0]} -> {ref[1]} "
              f"({best[(client, kind)] / best[ref]:.2f}x): {'PASS' if added <= LIMIT_MS else 'FAIL'}")
    print(f"{len(cells) - len(set(map(reference, clients)))} translated cells, {failed} over {LIMIT_MS} ms")


if __name__ == "__main__":
    main()
