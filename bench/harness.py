"""Process and measurement plumbing for bench/run.py: the upstream, the targets, the load tools."""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
ECHO_MODULE_PATHS = ("/usr/lib/nginx/modules/ngx_http_echo_module.so",)


@dataclass
class Ctx:
    """What every scenario and target needs: where things run and how to pin them."""

    run_dir: Path
    upstream: str  # base URL of the fake upstream, no trailing slash, e.g. http://127.0.0.1:PORT
    pin: bool
    scale: float = 1.0  # multiplies every duration (--quick uses 0.5)
    use_wrk: bool = True
    verbose: bool = False
    py_spy: str = "py-spy"
    profile_targets: set[str] = field(default_factory=set)  # --profile
    profile_rate: int = 100  # --profile-rate: py-spy samples per second
    procs: list[Proc] = field(default_factory=list)  # everything the bench started and still runs
    max_foreign_pct: float = 15.0
    retries: int = 1
    busy_strikes: int = 0  # measurements in a row still disturbed after their retries
    profile_to: Path | None = None  # set by the runner around the loads it wants profiled
    current: Proc | None = None  # the target under load, set by Scenario.measure

    def our_ticks(self) -> float:
        """CPU ticks used so far by the bench's processes: children waited for, and those running."""
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        me = resource.getrusage(resource.RUSAGE_SELF)
        return (ru.ru_utime + ru.ru_stime + me.ru_utime + me.ru_stime) * CLK_TCK + sum(p.ticks() for p in self.procs)

    def cpus(self, core: int) -> list[str]:
        return ["taskset", "-c", str(core)] if self.pin else []

    def log(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except (OSError, ValueError):
        return False


# ---- processes ---------------------------------------------------------------------------------

@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path
    startup_s: float = float("nan")

    def tree(self) -> list[int]:
        """The process and all its descendants (a gateway may fork workers)."""
        children: dict[int, list[int]] = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(d))
        out, todo = [], [self.popen.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(children.get(pid, []))
        return out

    def ticks(self) -> int:
        """CPU time (user + system, clock ticks) used so far by the process tree."""
        return sum(self.ticks_split())

    def ticks_split(self) -> tuple[int, int]:
        """(user, system) CPU time in clock ticks used so far by the process tree."""
        user = system = 0
        for pid in self.tree():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                user += int(fields[11])
                system += int(fields[12])
            except (OSError, IndexError, ValueError):
                pass
        return user, system

    def memory_mib(self) -> tuple[float, float]:
        """(current RSS, peak RSS) summed over the process tree, in MiB."""
        rss = hwm = 0
        for pid in self.tree():
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            rss += int(line.split()[1])
                        elif line.startswith("VmHWM:"):
                            hwm += int(line.split()[1])
            except OSError:
                pass
        return rss / 1024, hwm / 1024

    def stop(self) -> None:
        if self.popen.poll() is not None:
            return
        try:  # the process was started in its own session: signal exactly that group
            os.killpg(self.popen.pid, signal.SIGTERM)
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)
        except ProcessLookupError:
            pass

    def tail(self, n: int = 30) -> str:
        try:
            return "".join(self.log_path.read_text(errors="replace").splitlines(True)[-n:])
        except OSError:
            return ""


def spawn(ctx: Ctx, name: str, argv: list[str], core: int, env: dict[str, str] | None = None,
          health_url: str | None = None, timeout: float = 60.0) -> Proc:
    log_path = ctx.run_dir / f"{name}.log"
    full_env = dict(os.environ, **(env or {}))
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(ctx.cpus(core) + argv, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=full_env, cwd=ctx.run_dir,
                                 start_new_session=True)
    proc = Proc(name, popen, log_path)
    if health_url:
        deadline = t0 + timeout
        while not http_ok(health_url, timeout=0.5):
            if popen.poll() is not None or time.perf_counter() > deadline:
                proc.stop()
                raise RuntimeError(f"{name} did not become healthy at {health_url}:\n{proc.tail()}")
            time.sleep(0.02)
        proc.startup_s = time.perf_counter() - t0
    return proc


def render(template: Path, out: Path, fields: dict[str, str]) -> Path:
    text = template.read_text()
    for key, value in fields.items():
        text = text.replace(key, value)
    out.write_text(text)
    return out


def _quotable(text: str) -> str:
    """`text` for a '...' string in nginx.conf (which turns \\n and \\r back into line ends)."""
    if any(c in text for c in "'\\$"):
        raise SystemExit("canned bodies must not contain ', \\ or $")
    return text.replace("\r", "\\r").replace("\n", "\\n")


def upstream_cert(ctx: Ctx) -> Path:
    """A self-signed certificate for ``localhost`` (its own CA) and its key, made once per run with openssl:
    the TLS fake upstream's. Targets trust it through SSL_CERT_FILE (``ssl``'s default verify paths)."""
    cert, key = ctx.run_dir / "upstream-cert.pem", ctx.run_dir / "upstream-key.pem"
    if not cert.exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
    return cert


def start_upstream(ctx: Ctx, port: int, slow_seconds: float = 0.5, tls_port: int | None = None) -> Proc:
    """nginx on core 0 with canned OpenAI, Anthropic, Gemini answers, streams and slow answers (Cohere, Bedrock's
    Converse and InvokeModel, OpenAI's Responses: whole answers); with ``tls_port``, the same over HTTPS there too
    (certificate: ``upstream_cert``)."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    echo = next((p for p in ECHO_MODULE_PATHS if os.path.exists(p)), None)
    if not os.path.exists(nginx) or echo is None:
        raise SystemExit("bench needs nginx and its echo module: apt-get install -y nginx-light "
                         "libnginx-mod-http-echo (see bench/README.md)")
    up = BENCH_DIR / "upstream"
    fields = {"@@ECHO_MODULE@@": echo, "@@RUN_DIR@@": str(ctx.run_dir), "@@PORT@@": str(port),
              "@@SLOW_SECONDS@@": str(slow_seconds), "@@TLS@@": ""}
    if tls_port is not None:
        cert = upstream_cert(ctx)
        fields["@@TLS@@"] = (f"    listen 127.0.0.1:{tls_port} ssl backlog=4096;\n"
                             f"    ssl_certificate {cert};\n    ssl_certificate_key {cert.with_name('upstream-key.pem')};\n"
                             "    ssl_session_cache shared:tls:1m;\n")
    # OpenAI, Anthropic and Gemini answers: a whole body each and a stream framed as each API frames it.
    for prefix, whole_file, stream_file, sep in (("", "chat.json", "stream.sse", "\n\n"),
                                                 ("ANTHROPIC_", "anthropic.json", "anthropic-stream.sse", "\n\n"),
                                                 ("GEMINI_", "gemini.json", "gemini-stream.sse", "\r\n\r\n")):
        whole = (up / whole_file).read_text().strip()
        sse = (up / stream_file).read_bytes().decode()  # not read_text: it would turn CRLF into LF
        fields[f"@@{prefix}CHAT_BODY@@"] = _quotable(whole)
        fields[f"@@{prefix}STREAM_ECHOES@@"] = "\n".join(
            f"      echo -n '{_quotable(e + sep)}';\n      echo_flush;" for e in sse.split(sep) if e.strip())
    fields["@@COHERE_CHAT_BODY@@"] = _quotable((up / "cohere.json").read_text().strip())  # whole answers only
    fields["@@BEDROCK_CHAT_BODY@@"] = _quotable((up / "bedrock.json").read_text().strip())
    fields["@@RESPONSES_BODY@@"] = _quotable((up / "responses.json").read_text().strip())  # whole answers only
    conf = render(up / "nginx.conf.tmpl", ctx.run_dir / "nginx.conf", fields)
    return spawn(ctx, "nginx", [nginx, "-c", str(conf), "-p", str(ctx.run_dir)], core=0,
                 health_url=f"http://127.0.0.1:{port}/health", timeout=10)


# ---- targets -------------------------------------------------------------------------------------

@dataclass
class Target:
    """Something the load goes to. `start` returns the process to measure, or None (direct)."""

    name: str
    start: Callable[[Ctx, int], Proc | None]
    kind: str = "gateway"  # direct | floor | gateway | other
    port: int = 0
    proc: Proc | None = None
    results: dict[str, float] = field(default_factory=dict)
    rounds: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # raw, per scenario

    def url(self, ctx: Ctx) -> str:
        base = ctx.upstream if self.kind == "direct" else f"http://127.0.0.1:{self.port}"
        return base + "/v1/chat/completions"


def direct_target() -> Target:
    return Target("direct", lambda ctx, port: None, kind="direct")


def passthrough_target(python: str = sys.executable, name: str = "bare", script: str = "passthrough.py") -> Target:
    """A floor: ``passthrough.py`` (aiohttp's client, "bare") or ``passthrough_lean.py`` (relaygate's own, "lean")."""
    def start(ctx: Ctx, port: int) -> Proc:
        argv = [python, str(BENCH_DIR / script), "--upstream", ctx.upstream + "/v1", "--port", str(port)]
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_DIR), os.environ.get("PYTHONPATH")]))}
        return spawn(ctx, name, argv, core=1, env=env, health_url=f"http://127.0.0.1:{port}/health")
    return Target(name, start, kind="floor")


def fill_config(ctx: Ctx, config: Path, name: str) -> Path:
    """A variant is a config file; ${BENCH_UPSTREAM} in it becomes the fake upstream's base URL."""
    return render(config, ctx.run_dir / f"{name}{config.suffix}", {"${BENCH_UPSTREAM}": ctx.upstream})


def relaygate_target(name: str, config: Path, python: str = sys.executable) -> Target:
    def start(ctx: Ctx, port: int) -> Proc:
        cfg = fill_config(ctx, config, name)
        argv = [python, "-m", "relaygate", "serve", "--config", str(cfg), "--host", "127.0.0.1",
                "--port", str(port)]
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_DIR), os.environ.get("PYTHONPATH")]))}
        return spawn(ctx, name, argv, core=1, env=env, health_url=f"http://127.0.0.1:{port}/health")
    return Target(name, start, kind="gateway")


def litellm_target(python: str, config: Path) -> Target:
    def start(ctx: Ctx, port: int) -> Proc:
        cfg = fill_config(ctx, config, "litellm")
        argv = [python, "-m", "litellm.proxy.proxy_cli", "--config", str(cfg), "--host", "127.0.0.1",
                "--port", str(port), "--num_workers", "1"]
        env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "PYTHONPATH": ""}
        return spawn(ctx, "litellm", argv, core=1, env=env,
                     health_url=f"http://127.0.0.1:{port}/health/liveliness", timeout=180)
    return Target("litellm", start, kind="other")


# ---- load -------------------------------------------------------------------------------------

@dataclass
class Load:
    """A closed-loop load: `conns` clients POSTing bench/requests/`body` for `seconds`."""

    body: str
    conns: int
    seconds: float
    stream: bool = False
    timeout_s: float = 10.0
    mark: str = ""  # time to the first body bytes holding this (a Responses stream's first text delta)
    done_marker: str = "[DONE]"  # what a whole stream holds


def run_load(ctx: Ctx, url: str, load: Load, seconds: float) -> dict[str, float]:
    """Run one load on core 0 and return rate (per s), latencies (ms) and errors."""
    body = BENCH_DIR / "requests" / load.body
    secs = max(1, round(seconds))
    if ctx.use_wrk and not load.stream:
        argv = ["wrk", "-t1", f"-c{load.conns}", f"-d{secs}s", f"--timeout={int(load.timeout_s)}s",
                "-s", str(BENCH_DIR / "wrk" / "post.lua"), url, "--", str(body)]
    else:
        argv = [sys.executable, str(BENCH_DIR / "loadgen.py"), "--url", url, "--body", str(body),
                "-c", str(load.conns), "-d", str(secs), "--grace", str(load.timeout_s)]
        if load.stream:
            argv += ["--expect-done", "--done-marker", load.done_marker]
        if load.mark:
            argv += ["--mark", load.mark]
    prof = None
    if ctx.profile_to is not None and ctx.current is not None:
        # Sample the gateway during this load; --nonblocking so the profiler does not slow it.
        prof = subprocess.Popen(ctx.cpus(0) + [ctx.py_spy, "record", "--nonblocking", "-r", str(ctx.profile_rate), "-f", "raw",
                                "-p", str(ctx.current.popen.pid), "-d", str(secs), "-o", str(ctx.profile_to)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    before, ours_before = cpu_times(), ctx.our_ticks()
    target_before = ctx.current.ticks_split() if ctx.current is not None else (0, 0)
    out = subprocess.run(ctx.cpus(0) + argv, capture_output=True, text=True, timeout=secs + load.timeout_s + 30)
    if prof is not None:
        prof.wait(timeout=30)
    after, ours_after = cpu_times(), ctx.our_ticks()
    target_after = ctx.current.ticks_split() if ctx.current is not None else (0, 0)
    target_sys = target_after[1] - target_before[1]
    target_ticks = sum(target_after) - sum(target_before)
    busy = cpu_busy(before, after)
    window = max(1, sum(after[c][1] - before[c][1] for c in after) / max(1, len(after)))
    all_busy = sum(after[c][0] - before[c][0] for c in after)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"load generator failed: {' '.join(argv)}\n{out.stdout}\n{out.stderr}")
    raw = json.loads(line.split(" ", 1)[1])
    ms = 1e-3
    res = {
        "p50_ms": raw["p50_us"] * ms,
        "p99_ms": raw["p99_us"] * ms,
        "errors": sum(v for k, v in raw.items() if k.startswith("err_")),
        "cpu0_pct": busy.get(0, float("nan")),
        "cpu1_pct": busy.get(1, float("nan")),
        # CPU used meanwhile by processes that are not part of the bench (another test run...),
        # in % of one core: the runner repeats a measurement when this is high.
        "foreign_pct": max(0.0, 100 * (all_busy - (ours_after - ours_before)) / window),
    }
    if not raw["requests"]:  # nothing answered in the whole window: every client failed
        res.update(p50_ms=math.nan, p99_ms=math.nan, errors=res["errors"] + load.conns)
    if ctx.current is not None:
        settle(ctx.current)
    if target_ticks and raw["requests"]:
        # Robust to other load on the machine, unlike the rate: what one request costs the target.
        res["cpu_us"] = target_ticks / CLK_TCK * 1e6 / raw["requests"]
        res["sys_us"] = target_sys / CLK_TCK * 1e6 / raw["requests"]  # of which in the kernel (sockets, files)
    if "duration_us" in raw:  # wrk
        res["rate"] = raw["requests"] / (raw["duration_us"] / 1e6)
    else:
        res["rate"] = raw["rate"]
        res["ttfb_p50_ms"] = raw["ttfb_p50_us"] * ms
        res["ttfb_p99_ms"] = raw["ttfb_p99_us"] * ms
    if ctx.verbose:
        ctx.log(f"    {' '.join(argv[:6])}… -> {json.dumps(raw)}")
    return res


def settle(proc: Proc, limit_s: float = 30.0) -> None:
    """Wait until the target has worked off requests the load generator abandoned at its deadline
    (an overloaded gateway keeps serving them), so they do not slow the next measurement."""
    deadline = time.perf_counter() + limit_s
    last = proc.ticks()
    while time.perf_counter() < deadline:
        time.sleep(0.2)
        now = proc.ticks()
        if now - last <= 0.2 * CLK_TCK * 0.1:  # under 10 % of a core
            return
        last = now


def cpu_times() -> dict[int, tuple[int, int]]:
    """Per core: (busy, total) jiffies from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals]
                idle = v[3] + v[4]
                out[int(name[3:])] = (sum(v[:8]) - idle, sum(v[:8]))
    return out


def cpu_busy(a: dict[int, tuple[int, int]], b: dict[int, tuple[int, int]]) -> dict[int, float]:
    return {c: 100 * (b[c][0] - a[c][0]) / max(1, b[c][1] - a[c][1]) for c in a if c in b}
