"""The benchmark's scenarios: one table entry each. Add a scenario by adding an entry here.

A scenario either describes a closed-loop `Load` (run with wrk, or bench/loadgen.py for streams)
or brings its own `run(ctx, target) -> {metric: value}` for anything a load cannot express (first
audio byte, uploads...). Its `figures` choose which metrics the report shows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness import Ctx, Load, Target, run_load
from voice import speech_first_byte, upload_memory


@dataclass
class Figure:
    metric: str
    label: str
    better: str = "higher"  # "higher" | "lower" | "" (no ratio: counts, sanity figures)
    added: bool = False  # show value minus the direct value (the direct column stays absolute)
    fmt: str = "{:.2f}"


@dataclass
class Scenario:
    name: str
    title: str
    load: Load | None
    figures: list[Figure]
    run: Callable[[Ctx, Target], dict[str, float]] | None = None
    warmup_s: float = 1.0
    notes: list[str] = field(default_factory=list)

    def measure(self, ctx: Ctx, target: Target, profile_to: Path | None = None) -> dict[str, float]:
        """Warm up, then measure; repeat the measurement (up to ctx.retries times) when another
        process on the machine took more than ctx.max_foreign_pct of a core meanwhile.
        With `profile_to`, py-spy samples the target during the measurement."""
        if self.run is not None:
            return self.run(ctx, target)
        assert self.load is not None
        url = target.url(ctx)
        ctx.current = target.proc
        if self.warmup_s > 0:
            run_load(ctx, url, self.load, self.warmup_s * ctx.scale)
        ctx.profile_to = profile_to
        tries: list[dict[str, float]] = []
        try:
            for attempt in range(ctx.retries + 1):
                res = run_load(ctx, url, self.load, self.load.seconds * ctx.scale)
                tries.append(res)
                if res["foreign_pct"] <= ctx.max_foreign_pct:
                    ctx.busy_strikes = 0
                    break
                if attempt == ctx.retries or ctx.busy_strikes >= 3:
                    ctx.busy_strikes += 1
                    if ctx.busy_strikes == 3:
                        ctx.log("   the machine stays busy: no more measuring again (see the warnings)")
                    break
                ctx.log(f"   {self.name}: other processes used {res['foreign_pct']:.0f}% of a core, measuring again")
                time.sleep(2)
        finally:
            ctx.profile_to, ctx.current = None, None
        return min(tries, key=lambda r: r["foreign_pct"])


ERRORS = Figure("errors", "errors (status, socket, timeout)", "", fmt="{:.0f}")
BUSY = Figure("cpu1_pct", "core 1 busy (the gateway's), %", "", fmt="{:.0f}")
# CPU the target process used per request: stays true when other load steals the core.
CPU = Figure("cpu_us", "target CPU per request, us", "lower", fmt="{:.0f}")
# the part of it spent in the kernel: shared by every variant (sockets), so it shows how much of the CPU a
# user-space instruction count (bench/instructions.py) leaves out
SYS = Figure("sys_us", "  of which in the kernel, us", "lower", fmt="{:.0f}")

SCENARIOS: list[Scenario] = [
    Scenario("c1", "non-streaming, c=1", Load("chat.json", conns=1, seconds=3), [
        Figure("p50_ms", "added latency p50, ms", "lower", added=True, fmt="{:.3f}"),
        Figure("p99_ms", "added latency p99, ms", "lower", added=True, fmt="{:.3f}"),
    ]),
    Scenario("c64", "non-streaming, c=64", Load("chat.json", conns=64, seconds=4), [
        Figure("rate", "requests/s", "higher", fmt="{:.0f}"),
        CPU,
        SYS,
        Figure("p99_ms", "latency p99, ms", "lower"),
        ERRORS,
        BUSY,
    ]),
    Scenario("stream1", "streaming 20 chunks, c=1", Load("chat-stream.json", conns=1, seconds=3, stream=True), [
        Figure("ttfb_p50_ms", "added first-chunk p50, ms", "lower", added=True, fmt="{:.3f}"),
        Figure("ttfb_p99_ms", "added first-chunk p99, ms", "lower", added=True, fmt="{:.3f}"),
        Figure("p50_ms", "added whole-stream p50, ms", "lower", added=True, fmt="{:.3f}"),
    ]),
    Scenario("stream64", "streaming 20 chunks, c=64", Load("chat-stream.json", conns=64, seconds=4, stream=True), [
        Figure("rate", "streams/s", "higher", fmt="{:.0f}"),
        CPU,
        Figure("ttfb_p50_ms", "first chunk p50, ms", "lower"),
        ERRORS,
    ]),
    Scenario("speech1", "text to speech, first audio byte, c=1", None, [
        Figure("ttfb_p50_ms", "added first-byte p50, ms", "lower", added=True, fmt="{:.3f}"),
        Figure("ttfb_p99_ms", "added first-byte p99, ms", "lower", added=True, fmt="{:.3f}"),
        Figure("p50_ms", "added whole-answer p50, ms", "lower", added=True, fmt="{:.3f}"),
    ], run=speech_first_byte),
    Scenario("upload25", "25 MB audio upload (transcription)", None, [
        Figure("rss_rise_mib", "peak RSS rise during the upload, MiB", "lower", fmt="{:.1f}"),
        Figure("upload_s", "upload + answer, s (median of 3)", "lower", fmt="{:.3f}"),
        ERRORS,
    ], run=upload_memory),
    Scenario("slow200", "upstream answers in 500 ms, c=200", Load("chat-slow.json", conns=200, seconds=5), [
        Figure("p99_ms", "added latency p99, ms", "lower", added=True, fmt="{:.1f}"),
        Figure("rate", "requests/s (closed loop, max 400)", "higher", fmt="{:.0f}"),
        ERRORS,
    ]),
]

# Run once after a target starts, before any scenario: first requests pay for lazy imports,
# pool fill-up and caches, which no scenario should measure.
TARGET_WARMUP: list[Load] = [
    Load("chat.json", conns=16, seconds=2),
    Load("chat-stream.json", conns=16, seconds=1, stream=True),
]

# Read from the target's process, not from a load: start-up time, idle and peak memory.
PROCESS_FIGURES: list[Figure] = [
    Figure("startup_s", "start-up to healthy, s", "lower"),
    Figure("idle_rss_mib", "idle RSS, MiB", "lower", fmt="{:.0f}"),
    Figure("peak_rss_mib", "peak RSS over the run, MiB", "lower", fmt="{:.0f}"),
]
