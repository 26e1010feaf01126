"""Start-up time and idle memory of the gateway on its embedded default config (no --config: the ``demo``
model, the request log on in a SQLite file), as a user starting ``relaygate serve`` sees them.

Each run execs ``python -m relaygate serve`` in a fresh temporary directory (so the SQLite request log is
created from nothing), polls ``POST /v1/chat/completions`` for the demo model until the first 200, and takes
the time from the exec to that answer (and the CPU time the gateway used until then, which a busy machine
moves far less); then, one second later with nothing else asked, the resident set size (VmRSS of
/proc/PID/status). Prints the median and range over the runs; ``--modules`` also lists the top-level packages
the gateway imported.

    python bench/footprint.py                # 7 runs
    python bench/footprint.py -n 15 --json out.json
    python bench/footprint.py --modules      # also list the third-party packages the gateway imported

Linux only (/proc). Uses only the standard library, so it measures the gateway and nothing of its own.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BODY = json.dumps({"model": "demo", "messages": [{"role": "user", "content": "hello"}]}).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def first_good_request(port: int, deadline: float) -> bool:
    """Poll until the demo model answers 200 (True) or the deadline passes (False)."""
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("POST", "/v1/chat/completions", BODY, {"content-type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                return True
        except OSError:
            time.sleep(0.005)
        finally:
            conn.close()
    return False


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (/proc/PID/stat): unlike the wall time, barely moved by
    what else runs on a shared machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def gateway_env(pycache: str | None) -> dict[str, str]:
    """The gateway's environment: this checkout on its path, no OpenAI key (the embedded default alone: the
    demo model), and its byte-code cached in ``pycache`` as an installed package has it (pip compiles it at
    install time): with PYTHONDONTWRITEBYTECODE set, as in some shells and CI, every run would compile
    relaygate's ~120 modules from source again, ~0.3 s that no installed gateway pays."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OPENAI_API_KEY", None)
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = pycache  # outside the checkout: the tree stays as it is
    return env


def run_once(python: str, settle: float, pycache: str | None) -> dict[str, float]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="relaygate-footprint-") as cwd:
        env = gateway_env(pycache)
        started = time.monotonic()
        proc = subprocess.Popen([python, "-m", "relaygate", "serve", "--port", str(port)], cwd=cwd, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            if not first_good_request(port, started + 30):
                proc.kill()
                raise RuntimeError("no good answer in 30 s: " + (proc.communicate()[1] or b"").decode()[-2000:])
            ready = time.monotonic() - started
            cpu = cpu_seconds(proc.pid)
            time.sleep(settle)
            rss = rss_kib(proc.pid)
            assert Path(cwd, "relaygate.db").exists(), "the request log is on by default"
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return {"first_good_request_s": ready, "cpu_to_first_request_s": cpu, "idle_rss_mib": rss / 1024}


def imported_packages(python: str, pycache: str | None) -> list[str]:
    """The top-level packages the gateway imported while serving the default config (the first answer, then
    the shutdown; listed as it exits)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="relaygate-footprint-") as cwd:
        listing = Path(cwd, "modules.txt")
        code = ("import atexit, sys\n"
                f"atexit.register(lambda: open({str(listing)!r}, 'w').write('\\n'.join(sorted(sys.modules))))\n"
                "from relaygate.cli.main import main\n"
                f"sys.exit(main(['serve', '--port', '{port}']))\n")
        env = gateway_env(pycache)
        proc = subprocess.Popen([python, "-c", code], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        ok = first_good_request(port, time.monotonic() + 30)
        proc.terminate()
        proc.wait(10)
        if not ok:
            raise RuntimeError("the gateway did not answer")
        return sorted({m.split(".")[0] for m in listing.read_text().split() if not m.startswith("_")})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=7, help="runs (after one warm-up run that fills the OS page cache)")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds idle after the first answer before RSS")
    ap.add_argument("--python", default=sys.executable, help="interpreter that runs the gateway")
    ap.add_argument("--json", help="write every run's figures here")
    ap.add_argument("--modules", action="store_true", help="list the packages imported for the default config")
    ap.add_argument("--no-bytecode", action="store_true",
                    help="compile from source on every run (as with PYTHONDONTWRITEBYTECODE): the old measure")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="relaygate-pycache-") as tmp:
        pycache = None if args.no_bytecode else tmp
        run_once(args.python, 0.0, pycache)  # warm-up: byte-code and the page cache
        runs = [run_once(args.python, args.settle, pycache) for _ in range(args.n)]
        modules = imported_packages(args.python, pycache) if args.modules else []
    for key, unit in (("first_good_request_s", "s"), ("cpu_to_first_request_s", "s"), ("idle_rss_mib", "MiB")):
        values = [r[key] for r in runs]
        print(f"{key:24} median {statistics.median(values):7.3f} {unit:3}  "
              f"(min {min(values):.3f}, max {max(values):.3f}, {len(values)} runs)")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    if args.modules:
        print("imported:", " ".join(modules))
    return 0


if __name__ == "__main__":
    sys.exit(main())
