"""relaygate benchmark: the same scenarios direct to a fake upstream, through a bare proxy, through
relaygate (one or more config variants) and through LiteLLM, in one run, as one table of ratios.

    python bench/run.py                      # everything it finds; a few minutes
    python bench/run.py --quick --no-litellm # half the durations, no LiteLLM
    python bench/run.py --variant full=bench/variants/relaygate-full.yaml

See bench/README.md for the set-up and what each figure means.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    BENCH_DIR,
    Ctx,
    Target,
    direct_target,
    free_port,
    litellm_target,
    passthrough_target,
    relaygate_target,
    run_load,
    start_upstream,
)
from profsum import summarize  # noqa: E402
from scenarios import PROCESS_FIGURES, SCENARIOS, TARGET_WARMUP, Figure, Scenario  # noqa: E402

DEFAULT_VARIANTS = {"relaygate": "relaygate.yaml", "nolog": "relaygate-nolog.yaml"}  # in bench/variants/
LITELLM_CANDIDATES = ("/work/litellm-venv/bin/python", "~/litellm-venv/bin/python", "~/.litellm-venv/bin/python")

# Pass/fail lines printed under the table: (label, gateway metric, other target, minimum ratio).
TARGETS = [
    ("req/s at c=64 vs bare proxy", "c64.rate", "bare", 2 / 3),
    ("req/s at c=64 vs LiteLLM", "c64.rate", "litellm", 10.0),
    ("streams/s at c=64 vs bare proxy", "stream64.rate", "bare", 2 / 3),
    # issue 20: the lean floor (the same proxy on relaygate's own client); the next goal is half its rate
    ("req/s at c=64 vs lean floor", "c64.rate", "lean", 1 / 2),
    ("streams/s at c=64 vs lean floor", "stream64.rate", "lean", 1 / 2),
]


def find_litellm(arg: str | None) -> str | None:
    if arg:
        return arg
    for cand in [os.environ.get("LITELLM_PYTHON", ""), *LITELLM_CANDIDATES]:
        path = os.path.expanduser(cand)
        if path and os.access(path, os.X_OK):
            return path
    return None


# Issue 3: translation must not cost more than the network it saves. A translated variant (bench-model
# served by a provider other than openai) is held to the OpenAI passthrough variant of the same run.
TRANSLATION_MAX_RATIO = 1.5  # translated added c=1 latency p50 <= this x the passthrough's
FIRST_CHUNK_SLACK_MS = 1.0  # translated added first-chunk p50 <= the passthrough's + this


# Issue 6: auth + limits + the request log switched on cost at most 20 % of the passthrough's requests/s at
# c=64. Best-of-N rates on a shared machine are too noisy for a 20 % line, so each round's figures are paired
# with the passthrough's of the same round (measured next to each other) and the median ratio is judged.
ACCOUNTED_MIN_RATIO = 0.80


def accounted(config: Path) -> bool:
    """Whether a variant config has keys (a master key) and the request log on: the issue 6 configuration."""
    data = yaml.safe_load(config.read_text()) or {}
    auth = data.get("auth") or {}
    return bool(auth.get("master_key")) and (data.get("request_log") or {}).get("enabled", True) is not False


def paired(targets: list[Target], passthrough: str, names: list[str], scenario: str = "c64") -> list[str]:
    """Per-round ratios of each accounted variant to the passthrough (requests/s, and CPU per request
    inverted), their medians, and the PASS/MISS line of issue 6's speed clause."""
    by_name = {t.name: t for t in targets}
    base = by_name.get(passthrough)
    out: list[str] = []
    if base is None or scenario not in base.rounds:
        return out
    for n in names:
        t = by_name.get(n)
        if t is None or scenario not in t.rounds:
            continue
        pairs = list(zip(t.rounds[scenario], base.rounds[scenario], strict=False))
        rates = [a["rate"] / b["rate"] for a, b in pairs if a.get("rate") and b.get("rate")]
        cpus = [b["cpu_us"] / a["cpu_us"] for a, b in pairs
                if a.get("cpu_us") and b.get("cpu_us") and not math.isnan(a["cpu_us"] + b["cpu_us"])]
        if not rates:
            continue
        rate_m = statistics.median(rates)
        line = (f"{n} vs {passthrough} at {scenario}, paired rounds: req/s "
                f"{' '.join(f'{r:.2f}' for r in rates)} (median {rate_m:.2f}x)")
        if cpus:
            line += f"; CPU per request {' '.join(f'{r:.2f}' for r in cpus)} (median {statistics.median(cpus):.2f}x)"
        out.append(f"{'PASS' if rate_m >= ACCOUNTED_MIN_RATIO else 'MISS'}  {line}; "
                   f"target >= {ACCOUNTED_MIN_RATIO:.2f}x (auth + limits + log)")
    return out


def bench_provider(config: Path) -> str:
    """The provider serving `bench-model` in a variant config ("" when it has none)."""
    data = yaml.safe_load(config.read_text()) or {}
    for model in data.get("models") or []:
        if model.get("name") == "bench-model":
            return str((model.get("deployments") or [{}])[0].get("provider", ""))
    return ""


def translation(targets: list[Target], passthrough: str, translated: dict[str, str]) -> list[str]:
    """Added c=1 latency and stream first chunk (p50, minus direct) of each translated variant next to
    the passthrough's, with the ratio, and the PASS/MISS lines of issue 3's speed clause."""
    by_name = {t.name: t for t in targets}
    base, direct = by_name.get(passthrough), by_name.get("direct")
    if base is None or direct is None or not translated:
        return []

    def added(t: Target, key: str) -> float | None:
        v, d = t.results.get(key), direct.results.get(key)
        return None if v is None or d is None else v - d

    rows = [("c1.p50_ms", "added latency c=1 p50, ms"), ("stream1.ttfb_p50_ms", "added first chunk p50, ms")]
    names = [passthrough, *(n for n in translated if n in by_name)]
    head = f"{'translation cost (p50, minus direct)':<38}" + "".join(
        f"{n + ' (' + (translated.get(n) or 'openai') + ')':>22}" for n in names)
    out = [head, "-" * len(head)]
    for key, label in rows:
        b = added(base, key)
        cells = []
        for n in names:
            v = added(by_name[n], key)
            ratio = f" {v / b:5.2f}x" if n != passthrough and v is not None and b and b > 0 else ""
            cells.append(f"{fmt(v, '{:.3f}', plus=True) + ratio:>22}")
        out.append(f"{label:<38}" + "".join(cells))
    out.append("")
    for n in names[1:]:
        t = by_name[n]
        a, b = added(t, "c1.p50_ms"), added(base, "c1.p50_ms")
        if a is not None and b is not None:
            ok = a <= TRANSLATION_MAX_RATIO * b
            ratio = f"{a / b:.2f}x" if b > 0 else "-"
            out.append(f"{'PASS' if ok else 'MISS'}  {n} translated added latency at c=1 <= "
                       f"{TRANSLATION_MAX_RATIO}x {passthrough}'s: {a:.3f} vs {b:.3f} ms ({ratio})")
        a, b = added(t, "stream1.ttfb_p50_ms"), added(base, "stream1.ttfb_p50_ms")
        if a is not None and b is not None:
            ok = a - b <= FIRST_CHUNK_SLACK_MS
            out.append(f"{'PASS' if ok else 'MISS'}  {n} stream first chunk within {FIRST_CHUNK_SLACK_MS:g} ms "
                       f"of {passthrough}'s: {a:.3f} vs {b:.3f} ms ({a - b:+.3f} ms)")
    return out


PROFILED = ("c64", "stream64")  # scenarios --profile samples


def start_target(ctx: Ctx, target: Target) -> bool:
    """Start a target, record its start-up and idle memory, warm it up. False if it failed."""
    target.port = free_port()
    try:
        target.proc = target.start(ctx, target.port)
    except (RuntimeError, OSError) as exc:
        ctx.log(f"   could not start {target.name}: {exc}")
        target.results["failed"] = 1
        return False
    if target.proc is not None:
        ctx.procs.append(target.proc)
        target.results["startup_s"] = target.proc.startup_s
        target.results["idle_rss_mib"] = target.proc.memory_mib()[0]
    ctx.current = target.proc
    for load in TARGET_WARMUP:
        run_load(ctx, target.url(ctx), load, load.seconds * ctx.scale)
    ctx.current = None
    ctx.log(f"   {target.name} up" + (f" in {target.proc.startup_s:.2f}s" if target.proc else ""))
    return True


def best(sc: Scenario, rounds: list[dict[str, float]]) -> dict[str, float]:
    """The round best on the scenario's first figure (interference only slows things down);
    errors are summed over all rounds so none is hidden."""
    first = sc.figures[0]
    pick = (max if first.better == "higher" else min)(rounds, key=lambda r: r.get(first.metric, math.nan))
    return dict(pick, errors=sum(r.get("errors", 0) for r in rounds))


def measure_scenario(ctx: Ctx, sc: Scenario, targets: list[Target], rounds: int) -> None:
    """Each round runs the scenario on every target, in reverse order every other round, so
    slow drifts and bursts of outside load fall on all targets alike."""
    per_target: dict[str, list[dict[str, float]]] = {t.name: [] for t in targets}
    for r in range(rounds):
        for target in targets if r % 2 == 0 else targets[::-1]:
            if target.results.get("failed"):
                continue
            t0 = time.perf_counter()
            prof = None
            if target.proc is not None and target.name in ctx.profile_targets and sc.name in PROFILED and r == 0:
                prof = ctx.run_dir / f"profile-{target.name}-{sc.name}.txt"
            res = sc.measure(ctx, target, profile_to=prof)
            per_target[target.name].append(res)
            if prof is not None and prof.exists():
                summary = summarize(prof)
                (ctx.run_dir / f"{prof.stem}-summary.txt").write_text(summary)
                ctx.log("\n".join(summary.splitlines()[:12]))
            shown = ", ".join(f"{f.metric}={res.get(f.metric, math.nan):.4g}" for f in sc.figures)
            ctx.log(f"   {sc.name:<9} {target.name:<10} {shown}  ({time.perf_counter() - t0:.1f}s)")
            if target.proc is not None and target.proc.popen.poll() is not None:
                ctx.log(f"   {target.name} exited during {sc.name}:\n{target.proc.tail()}")
                target.results["failed"] = 1
    for target in targets:
        if per_target[target.name]:
            target.rounds[sc.name] = per_target[target.name]
            for k, v in best(sc, per_target[target.name]).items():
                target.results[f"{sc.name}.{k}"] = v


def fmt(value: float | None, spec: str, plus: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = spec.format(value)
    return ("+" + text) if plus and value >= 0 else text


def table(targets: list[Target], scenarios: list[Scenario]) -> str:
    by_name = {t.name: t for t in targets}
    direct = by_name.get("direct")
    gateways = [t for t in targets if t.kind == "gateway"]
    # The first gateway against everything else; further variants against the bare proxy and the first.
    ratio_cols = [(g, o) for g in gateways[:1] for o in targets if o.kind != "gateway"]
    ratio_cols += [(g, o) for g in gateways[1:] for o in targets if o.kind == "floor" or o is gateways[0]]
    head = ["figure"] + [t.name for t in targets] + [f"{g.name}/{o.name}" for g, o in ratio_cols]
    rows: list[list[str]] = []

    def shown(t: Target, key: str, fig: Figure) -> float | None:
        v = t.results.get(key)
        if v is None or not fig.added or t is direct:
            return v
        d = direct.results.get(key) if direct else None
        return None if d is None else v - d

    sections = [(sc.title, [(f"{sc.name}.{f.metric}", f) for f in sc.figures]) for sc in scenarios]
    sections.append(("gateway process", [(f.metric, f) for f in PROCESS_FIGURES]))
    for title, figs in sections:
        rows.append([f"[{title}]"])
        for key, fig in figs:
            row = [fig.label]
            for t in targets:
                row.append(fmt(shown(t, key, fig), fig.fmt, plus=fig.added and t is not direct))
            for g, o in ratio_cols:
                a, b = shown(g, key, fig), shown(o, key, fig)
                if fig.better and a is not None and b is not None and b > 0 and not (fig.added and o is direct):
                    row.append(f"{a / b:.2f}x")
                else:
                    row.append("-")
            rows.append(row)
    widths = [max(len(r[i]) for r in [head] + rows if i < len(r)) for i in range(len(head))]
    lines = ["  ".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(head))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        if len(r) == 1:
            lines.append(r[0])
        else:
            lines.append("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
    return "\n".join(lines)


def checks(targets: list[Target]) -> list[str]:
    by_name = {t.name: t for t in targets}
    out = []
    for g in (t for t in targets if t.kind == "gateway"):
        for label, key, other, minimum in TARGETS:
            o = by_name.get(other)
            a, b = g.results.get(key), o.results.get(key) if o else None
            if not (a and b and o):
                continue
            ratio, how = a / b, ""
            sc = key.split(".")[0]
            ca, cb = g.results.get(f"{sc}.cpu_us"), o.results.get(f"{sc}.cpu_us")
            if ca and cb:
                noisy = max(g.results.get(f"{sc}.foreign_pct", 0), o.results.get(f"{sc}.foreign_pct", 0)) > 15
                how = f"; by CPU per request {cb / ca:.2f}x"
                if noisy:  # the rates were disturbed: judge on what each request cost the gateway
                    ratio, how = cb / ca, f"; rates disturbed by other load, judged by CPU per request (rates {a / b:.2f}x)"
            verdict = "PASS" if ratio >= minimum else "MISS"
            out.append(f"{verdict}  {g.name} {label}: {ratio:.2f}x (target >= {minimum:.2f}x{how})")
        errs = g.results.get("slow200.errors")
        if errs is not None:
            out.append(f"{'PASS' if errs == 0 else 'MISS'}  {g.name} slow upstream c=200: {errs:.0f} errors")
    # The load generator must never be the limit: direct must go well beyond every proxy.
    direct = by_name.get("direct")
    for key in ("c64.rate", "stream64.rate"):
        best = max((t.results.get(key, 0) for t in targets if t.kind != "direct"), default=0)
        ceiling = direct.results.get(key) if direct else None
        if ceiling and best and ceiling < 2 * best:
            out.append(f"WARN  {key}: direct ({ceiling:.0f}) is < 2x the best proxy ({best:.0f}); "
                       "the load generator or upstream may be limiting")
    for t in targets:
        for key, v in t.results.items():
            sc = key.split(".")[0]
            if key.endswith("foreign_pct") and v > 15:
                out.append(f"WARN  {t.name} {sc}: other processes on this machine used {v:.0f}% of a core")
            quiet = t.results.get(f"{sc}.foreign_pct", 0) < 15
            if key.endswith("cpu0_pct") and v > 95 and t.kind != "direct" and quiet:
                out.append(f"WARN  {t.name} {sc}: core 0 (load generator + upstream) was {v:.0f}% busy")
        if t.results.get("failed"):
            out.append(f"FAIL  {t.name} did not complete (see its log in the run directory)")
    return out


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so the finally blocks stop every process the bench started


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    ap = argparse.ArgumentParser(description="relaygate benchmark (see bench/README.md)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=CONFIG",
                    help="a relaygate config to measure (repeatable); default: "
                    + ", ".join(f"{n}={f}" for n, f in DEFAULT_VARIANTS.items()))
    ap.add_argument("--passthrough", default="nolog", metavar="NAME",
                    help="the OpenAI passthrough variant translated variants are held to (default nolog)")
    ap.add_argument("--no-relaygate", action="store_true", help="skip relaygate (measure only the others)")
    ap.add_argument("--no-lean", action="store_true",
                    help="skip the lean floor (bench/passthrough_lean.py: the bare proxy on relaygate's client)")
    ap.add_argument("--with-litellm", metavar="PYTHON", help="python of a venv with litellm[proxy] (auto-detected)")
    ap.add_argument("--no-litellm", action="store_true")
    ap.add_argument("--litellm-config", default=str(BENCH_DIR / "variants" / "litellm.yaml"))
    ap.add_argument("--relaygate-python", default=sys.executable)
    ap.add_argument("--scenarios", help="comma list, default all: " + ",".join(s.name for s in SCENARIOS))
    ap.add_argument("--rounds", type=int, default=2, help="runs of each scenario per target; the best counts")
    ap.add_argument("--retries", type=int, default=1,
                    help="measure again when other processes took more than --max-foreign %% of a core")
    ap.add_argument("--max-foreign", type=float, default=15.0, metavar="PCT")
    ap.add_argument("--quick", action="store_true", help="one round, half durations")
    ap.add_argument("--no-pin", action="store_true", help="do not pin gateway/load generator to cores 1/0")
    ap.add_argument("--no-wrk", action="store_true", help="use bench/loadgen.py for every load")
    ap.add_argument("--json", metavar="PATH", help="also write every raw figure here")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (configs, logs)")
    ap.add_argument("--profile", metavar="TARGETS", default="",
                    help="comma list of targets to sample with py-spy during " + ", ".join(PROFILED) +
                    " (implies --keep; summaries in the run directory)")
    ap.add_argument("--profile-rate", type=int, default=100, metavar="HZ",
                    help="py-spy samples per second (more sees short calls; it costs the target CPU)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()

    scenarios = SCENARIOS
    if args.scenarios:
        wanted = args.scenarios.split(",")
        scenarios = [s for s in SCENARIOS if s.name in wanted]
    if args.quick:
        args.rounds = 1
    pin = not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    use_wrk = not args.no_wrk and shutil.which("wrk") is not None
    run_dir = Path(tempfile.mkdtemp(prefix="relaygate-bench-"))
    up_port = free_port()
    ctx = Ctx(run_dir=run_dir, upstream=f"http://127.0.0.1:{up_port}", pin=pin,
              scale=0.5 if args.quick else 1.0, use_wrk=use_wrk, verbose=args.verbose,
              retries=args.retries, max_foreign_pct=args.max_foreign)

    targets = [direct_target(), passthrough_target()]
    if not args.no_lean:
        targets.append(passthrough_target(name="lean", script="passthrough_lean.py"))
    translated: dict[str, str] = {}  # variant -> provider, for the variants that translate bench-model
    with_accounting: list[str] = []  # variants with keys, limits and the request log on (issue 6)
    if not args.no_relaygate:
        variants = args.variant or [f"{n}={BENCH_DIR / 'variants' / f}" for n, f in DEFAULT_VARIANTS.items()]
        for v in variants:
            name, _, path = v.partition("=")
            targets.append(relaygate_target(name, Path(path), python=args.relaygate_python))
            provider = bench_provider(Path(path))
            if provider not in ("openai", ""):
                translated[name] = provider
            elif accounted(Path(path)):
                with_accounting.append(name)
    litellm = None if args.no_litellm else find_litellm(args.with_litellm)
    if litellm:
        targets.append(litellm_target(litellm, Path(args.litellm_config)))
    if args.profile:
        ctx.profile_targets = set(args.profile.split(","))
        ctx.profile_rate = args.profile_rate
        ctx.py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        args.keep = True
    ctx.log(f"run dir {run_dir}; pinned={pin}; load={'wrk + loadgen.py' if use_wrk else 'loadgen.py'}; "
            f"litellm={litellm or ('off' if args.no_litellm else 'not found')}")

    upstream = start_upstream(ctx, up_port)
    ctx.procs.append(upstream)
    t0 = time.perf_counter()
    try:
        # All targets stay up together (idle, they cost nothing) so scenarios can interleave them.
        for t in targets:
            start_target(ctx, t)
        for sc in scenarios:
            measure_scenario(ctx, sc, targets, args.rounds)
        for t in targets:
            if t.proc is not None:
                t.results["peak_rss_mib"] = t.proc.memory_mib()[1]
    finally:
        for p in ctx.procs:
            p.stop()
    print(f"\nrelaygate bench, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
          f"gateway pinned to core 1: {pin}, best of {args.rounds} round(s), {time.perf_counter() - t0:.0f}s")
    print("Added figures are each target minus direct; ratios are column/column in this run.\n")
    print(table(targets, scenarios))
    print()
    for line in translation(targets, args.passthrough, translated):
        print(line)
    for line in checks(targets):
        print(line)
    for line in paired(targets, args.passthrough, with_accounting):
        print(line)
    if args.json:
        raw = {t.name: {"best": t.results, "rounds": t.rounds} for t in targets}
        Path(args.json).write_text(json.dumps(raw, indent=1))
    if args.keep:
        print(f"\nrun directory kept: {run_dir}")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
