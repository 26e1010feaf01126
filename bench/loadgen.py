"""Closed-loop HTTP/1.1 load generator for streamed (SSE) responses; also handles plain JSON.

wrk cannot time the first chunk of a stream, so this measures, per request, the time to the first
body bytes (TTFB) and to the end of the response. It runs on uvloop with httptools' C parser and
keeps one keep-alive connection per concurrent client, so it stays far cheaper per request than any
Python gateway it measures: run it against the upstream directly to see its own ceiling.

    python bench/loadgen.py --url http://127.0.0.1:8000/v1/chat/completions \
        --body bench/requests/chat-stream.json -c 64 -d 5 --expect-done

`--mark` times the first body bytes that hold a marker instead (a Responses stream's first text delta:
`--mark response.output_text.delta`), and `--done-marker` names what a whole stream must contain (default
`[DONE]`; a Responses stream: `response.completed`).

Prints one line `BENCH_JSON {...}` (times in microseconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from functools import partial
from urllib.parse import urlsplit

import httptools

try:
    import uvloop
except ImportError:  # pragma: no cover - the bench venv has it; plain asyncio still works
    uvloop = None  # type: ignore[assignment]


class Stats:
    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.ttfb: list[float] = []
        self.total: list[float] = []
        self.done_in_window = 0
        self.err_status = 0
        self.err_incomplete = 0
        self.err_conn = 0


class Client(asyncio.Protocol):
    """One connection that sends the same request again as soon as the previous answer ends."""

    def __init__(self, request: bytes, stats: Stats, expect_done: bool, finished: asyncio.Future,
                 mark: bytes = b"", done_marker: bytes = b"[DONE]") -> None:
        self.request = request
        self.stats = stats
        self.expect_done = expect_done
        self.mark = mark
        self.done_marker = done_marker
        self.seen_done = False
        self.finished = finished
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.t0 = 0.0
        self.first = 0.0
        self.tail = b""
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        if time.perf_counter() >= self.stats.deadline:
            self._finish()
            return
        self.first = 0.0
        self.tail = b""
        self.seen_done = False
        self.busy = True
        self.t0 = time.perf_counter()
        assert self.transport is not None
        self.transport.write(self.request)

    def _finish(self) -> None:
        self.busy = False
        if self.transport is not None:
            self.transport.close()
        if not self.finished.done():
            self.finished.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.stats.err_conn += 1
            self._finish()

    def on_body(self, body: bytes) -> None:
        seen = self.tail + body  # a marker may straddle two reads
        if not self.first and (not self.mark or self.mark in seen):
            self.first = time.perf_counter()
        if self.expect_done and not self.seen_done:
            self.seen_done = self.done_marker in seen
        self.tail = seen[-64:]

    def on_message_complete(self) -> None:
        end = time.perf_counter()
        st = self.stats
        if self.parser.get_status_code() != 200:
            st.err_status += 1
        elif self.expect_done and not self.seen_done:
            st.err_incomplete += 1
        else:
            st.ttfb.append((self.first or end) - self.t0)
            st.total.append(end - self.t0)
            if end <= st.deadline:
                st.done_in_window += 1
        self.busy = False
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.busy:
            self.stats.err_conn += 1
        self.busy = False
        if not self.finished.done():
            self.finished.set_result(None)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


async def run(url: str, body: bytes, conns: int, duration: float, expect_done: bool, grace: float,
              mark: bytes = b"", done_marker: bytes = b"[DONE]") -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\n"
        f"Authorization: Bearer sk-bench-5f0c2a9e71d43b86a1e07c9d2f4b6e38\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    stats = Stats(start + duration)
    waiters = []
    for _ in range(conns):
        fut: asyncio.Future = loop.create_future()
        try:
            await loop.create_connection(partial(Client, request, stats, expect_done, fut, mark, done_marker), host, port)
            waiters.append(fut)
        except OSError:
            stats.err_conn += 1
    _, pending = await asyncio.wait(waiters, timeout=duration + grace) if waiters else (set(), set())
    elapsed = min(time.perf_counter(), stats.deadline) - start
    us = 1e6
    return {
        "requests": len(stats.total),
        "rate": stats.done_in_window / elapsed if elapsed > 0 else 0.0,
        "ttfb_p50_us": pct(stats.ttfb, 50) * us,
        "ttfb_p99_us": pct(stats.ttfb, 99) * us,
        "p50_us": pct(stats.total, 50) * us,
        "p99_us": pct(stats.total, 99) * us,
        "err_status": stats.err_status,
        "err_incomplete": stats.err_incomplete,
        "err_conn": stats.err_conn,
        "err_timeout": len(pending),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--body", required=True, help="file with the JSON request body")
    ap.add_argument("-c", "--connections", type=int, default=1)
    ap.add_argument("-d", "--duration", type=float, default=5.0, help="seconds")
    ap.add_argument("--grace", type=float, default=10.0, help="seconds to wait for requests in flight")
    ap.add_argument("--expect-done", action="store_true", help="count a stream without [DONE] as an error")
    ap.add_argument("--done-marker", default="[DONE]", help="what --expect-done looks for (at most 64 bytes)")
    ap.add_argument("--mark", default="", help="time the first body bytes holding this (at most 64 bytes)")
    args = ap.parse_args()
    with open(args.body, "rb") as f:
        body = f.read()
    factory = uvloop.new_event_loop if uvloop is not None else None
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(run(args.url, body, args.connections, args.duration, args.expect_done, args.grace,
                                        args.mark.encode(), args.done_marker.encode()))
    print("BENCH_JSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
