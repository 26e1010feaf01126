"""What the Responses API adds to a stream: c=1 time to a Responses stream's first text delta against a chat
stream's first chunk, through the same gateway, on the same model (the fake upstream's 20-chunk stream).

The Responses request is translated to chat, its answer to the Responses events (``response.created`` …
``response.output_text.delta``), and the response stored (SQLite, written off the event loop). Cells run
one client at a time, in rounds that alternate the order; the p50 of the best round of each is compared
(issue 24's target: at most +0.3 ms).

    python bench/responses.py                   # 3 rounds of 3 s per cell
    python bench/responses.py --rounds 5 --seconds 5
    python bench/responses.py --interleaved 1000  # cells taken in turn request by request (min, p25, p50)

On a loaded machine the rounds drift apart by milliseconds; ``--interleaved`` sends one request of each cell
in turn on its own keep-alive connection, so whatever load comes hits every cell alike.

Needs nginx with the echo module (the fake upstream), like run.py; the load is bench/loadgen.py.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BENCH_DIR, Ctx, Load, free_port, relaygate_target, run_load, start_upstream  # noqa: E402

CHAT = "chat stream: first chunk"
CHAT_TEXT = "chat stream: first text delta"
RESPONSES = "responses stream: first text delta"
RESPONSES_UNSTORED = "responses stream (store false)"
# (cell, path, body, load options)
CELLS = [
    (CHAT, "/v1/chat/completions", "chat-stream.json", {}),
    (CHAT_TEXT, "/v1/chat/completions", "chat-stream.json", {"mark": '"delta":{"content":'}),
    (RESPONSES, "/v1/responses", "responses-stream.json",
     {"mark": "response.output_text.delta", "done_marker": "response.completed"}),
    (RESPONSES_UNSTORED, "/v1/responses", "responses-stream-unstored.json",
     {"mark": "response.output_text.delta", "done_marker": "response.completed"}),
]
LIMIT_MS = 0.3


def interleaved(port: int, rounds: int) -> dict[str, list[float]]:
    """Each cell's time to its marker (ms), one request of each cell in turn, ``rounds`` times."""
    conns = {}
    for cell, path, body, opts in CELLS:
        data = (BENCH_DIR / "requests" / body).read_bytes()
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n").encode()
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mark = opts.get("mark", "data: ").encode()
        conns[cell] = (sock, head + data, mark, opts.get("done_marker", "[DONE]").encode())
    times: dict[str, list[float]] = {cell: [] for cell in conns}
    try:
        for r in range(rounds + 30):  # the first 30: warm-up
            for cell, (sock, request, mark, done) in conns.items():
                t0 = time.perf_counter()
                sock.sendall(request)
                seen, first = b"", 0.0
                while not (done in seen and seen.endswith(b"0\r\n\r\n")):  # the chunked body's end
                    piece = sock.recv(65536)
                    if not piece:
                        raise SystemExit(f"{cell}: the gateway closed the connection")
                    seen += piece
                    if not first and mark in seen:
                        first = time.perf_counter()
                if r >= 30:
                    times[cell].append((first - t0) * 1000)
    finally:
        for sock, *_ in conns.values():
            sock.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--no-pin", action="store_true", help="do not pin the load and the target to cores")
    ap.add_argument("--interleaved", type=int, default=0, metavar="N",
                    help="N requests of each cell, taken in turn (instead of rounds)")
    args = ap.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="relaygate-responses-"))
    up = free_port()
    ctx = Ctx(run_dir=run_dir, upstream=f"http://127.0.0.1:{up}", pin=not args.no_pin, use_wrk=False)
    ctx.procs.append(start_upstream(ctx, up))
    t = relaygate_target("relaygate", BENCH_DIR / "variants" / "relaygate-nolog.yaml")
    t.port = free_port()
    t.proc = t.start(ctx, t.port)
    assert t.proc is not None
    ctx.procs.append(t.proc)
    ctx.current = t.proc
    ttfb: dict[str, list[float]] = {cell: [] for cell, *_ in CELLS}
    if args.interleaved:
        try:
            times = interleaved(t.port, args.interleaved)
        finally:
            for p in reversed(ctx.procs):
                p.stop()
        print(f"{'cell (c=1, interleaved)':40} {'min ms':>8} {'p25 ms':>8} {'p50 ms':>8}")
        for cell, v in times.items():
            print(f"{cell:40} {min(v):8.3f} {statistics.quantiles(v, n=4)[0]:8.3f} {statistics.median(v):8.3f}")
        return
    try:
        for _, path, body, opts in CELLS:  # warm-up: pools, lazy imports, the database
            run_load(ctx, f"http://127.0.0.1:{t.port}{path}", Load(body, 1, 1, stream=True, **opts), 1)
        for r in range(args.rounds):
            for cell, path, body, opts in (CELLS if r % 2 == 0 else CELLS[::-1]):
                res = run_load(ctx, f"http://127.0.0.1:{t.port}{path}",
                               Load(body, 1, args.seconds, stream=True, **opts), args.seconds)
                if res["errors"]:
                    raise SystemExit(f"{cell}: {res['errors']} errors; see {run_dir}")
                ttfb[cell].append(res["ttfb_p50_ms"])
                ctx.log(f"round {r + 1} {cell}: p50 {res['ttfb_p50_ms']:.3f} ms")
    finally:
        for p in reversed(ctx.procs):
            p.stop()
    best = {cell: min(v) for cell, v in ttfb.items()}
    print(f"{'cell (c=1, 20-chunk stream)':40} {'p50 ms (best round)':>20} {'median round':>13}")
    for cell, *_ in CELLS:
        print(f"{cell:40} {best[cell]:20.3f} {statistics.median(ttfb[cell]):13.3f}")
    for cell in (RESPONSES, RESPONSES_UNSTORED):
        added = best[cell] - best[CHAT]
        verdict = "PASS" if added <= LIMIT_MS else "FAIL"
        print(f"{cell} adds {added:+.3f} ms p50 over {CHAT} ({best[cell] / best[CHAT]:.2f}x): "
              f"{verdict} (<= {LIMIT_MS} ms)")


if __name__ == "__main__":
    main()
