"""Instructions per call of a small piece of code, counted by callgrind (noise-free, like instructions.py).

Each case runs its statement N1 and then N2 times in two processes under callgrind; the difference of the
totals divided by N2 - N1 is the cost of one call, with start-up, imports and set-up cancelled out.

    python bench/microinstr.py                 # every case
    python bench/microinstr.py usage-msgspec usage-orjson
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent

_ANSWER = f"body = open({str(BENCH_DIR / 'upstream' / 'chat.json')!r}, 'rb').read().strip()\n"
_PROTOCOL = f"import sys\nsys.path.insert(0, {str(BENCH_DIR)!r})\nfrom protocol_case import protocol\n" \
    "one = protocol({guarded}).one\n"
_CACHE = f"import sys\nsys.path.insert(0, {str(BENCH_DIR)!r})\nfrom cache_case import case\n" \
    "one = case({headers}, {layered})\n"
_REQUEST = f"request = open({str(BENCH_DIR / 'requests' / 'chat.json')!r}, 'rb').read().strip()\n"
CASES: dict[str, tuple[str, str]] = {  # name: (set-up, statement)
    "usage-orjson": (_ANSWER + "import orjson\nfrom relaygate.core.call import Usage\n",
                     "Usage.from_openai(orjson.loads(body).get('usage'))"),
    "usage-msgspec": (_ANSWER + "from relaygate.providers.openai.usage import usage_of\n", "usage_of(body)"),
    "usage-today": (_ANSWER + "from relaygate.providers.openai_format import usage_of as _usage_of\n", "_usage_of(body)"),
    "orjson-loads": (_ANSWER + "import orjson\n", "orjson.loads(body)"),
    "msgspec-decode": (_ANSWER + "from relaygate.providers.openai.usage import _decode\n", "_decode(body)"),
    "request-orjson": (_REQUEST + "import orjson\n", "orjson.loads(request)"),
    "request-checked": (_REQUEST + "from relaygate.core.jsonvalue import loads\n", "loads(request)"),
    "request-shape": (_REQUEST + "import orjson\nfrom relaygate.core import shapes\n"
                      "from relaygate.core.shapes.openai import ChatRequest\nbody = orjson.loads(request)\n",
                      "shapes.check(body, ChatRequest)"),
    "usage-object": ("from relaygate.core.call import Usage\n", "Usage(prompt_tokens=1, completion_tokens=2)"),
    "nothing": ("", "pass"),
    # the response cache layer around a stand-in upstream (bench/cache_case.py)
    "cache-passthrough": (_CACHE.format(headers="{}", layered=False), "one()"),
    "cache-miss": (_CACHE.format(headers="{'x-relaygate-cache': 'refresh'}", layered=True), "one()"),
    "cache-hit": (_CACHE.format(headers="{}", layered=True), "one()"),
    # one chat request through the HTTP protocol, bytes in to answer done (bench/protocol_case.py)
    "http-protocol-uvicorn": (_PROTOCOL.format(guarded=False), "one()"),
    "http-protocol-guarded": (_PROTOCOL.format(guarded=True), "one()"),
}

# one call through the trace layer and one upstream attempt (spans made, ended and queued for export; the
# export itself runs later in the exporter's thread: trace-export), against the same call with tracing off.
# The queue is emptied after each call, so the exporter's thread never wakes within the run.
_TRACE = """
import asyncio
from relaygate.config import parse_config
from relaygate.core.call import Call, Route
from relaygate.gateway import Gateway
cfg = parse_config({{"models": [{{"name": "m", "deployments": [{{"provider": "demo", "model": "demo"}}]}}],
                    "request_log": {{"enabled": False}}, "metrics": {{"enabled": False}},
                    "tracing": {tracing}}}, {{}})
loop = asyncio.new_event_loop()
gw = loop.run_until_complete(Gateway.create(cfg))
queued = gw.tracing.queue.spans if gw.tracing is not None else []
body = {{"model": "m", "messages": [{{"role": "user", "content": "hi"}}], "max_tokens": 20}}
async def one():
    reply = await gw.handle(Call(id="req_0123456789abcdef01234567", route=Route.CHAT, model="m", body=body, headers={{}}))
    reply.finish()
"""
_TRACE_ON = '{{"endpoint": "http://127.0.0.1:9/v1/traces", "batch_delay": 60, "queue_size": 1000000, "sample_ratio": {}}}'
_ONE = "loop.run_until_complete(one()); queued.clear()"
CASES["trace-off"] = (_TRACE.format(tracing="{}"), _ONE)
# the same call with the metrics on (the default) against trace-off, where they are off: the observe layer's cost
CASES["metrics-on"] = (_TRACE.format(tracing="{}").replace('"metrics": {"enabled": False}', '"metrics": {}'), _ONE)
CASES["trace-on"] = (_TRACE.format(tracing=_TRACE_ON.format(1.0)), _ONE)
CASES["trace-sampled-5%"] = (_TRACE.format(tracing=_TRACE_ON.format(0.05)), _ONE)
# the exporter's thread: one call's two spans encoded (the request's OTLP message, protobuf)
CASES["trace-export"] = (
    _TRACE.format(tracing=_TRACE_ON.format(1.0)) + "loop.run_until_complete(one())\nspans = list(queued)\n"
    "encode = gw.tracing.exporter.encode\n", "encode(spans)")
# the same call's record among a full batch of them (what the thread pays per call, the batch's own part shared)
CASES["trace-export-batch"] = (CASES["trace-export"][0] + "spans = spans * 512\n", "encode(spans)")

# the request log writer inserting a chunk of 25 rows (one transaction, as BulkInsert writes them) into SQLite:
# with the overview's covering index (migration 6) against the index on ts alone it replaced; rows in time order
_LOG_CHUNK = """
import itertools, os, tempfile, time
from relaygate.store.schema import request_log
from relaygate.store.bulk import BulkInsert
from relaygate.store.db import Database
db = Database("sqlite:///" + os.path.join(tempfile.mkdtemp(), "log.db"))
db.migrate()
with db.engine.begin() as conn:
    for ddl in {schema!r}:
        conn.exec_driver_sql(ddl)
insert = BulkInsert(request_log)
base = dict(request_id="req_0", day="2026-12-06", key_id="key_1", team_id=None, user_id=None, model="gpt-4o-mini",
            deployment="gpt-4o-mini/openai/0", provider="openai", route="chat", stream=False, status=200, error=None,
            error_message=None, latency_ms=812.5, ttft_ms=None, prompt_tokens=120, completion_tokens=80,
            cached_tokens=0, cost_nano=66000, cache_hit=False, attempts=1, client_ip="127.0.0.1", request_body=None,
            response_body=None, usage_estimated=False, saved_nano=0, attempt_log=None)
counter = itertools.count()
t0 = time.time()
def chunk():
    rows = []
    for _ in range(25):
        i = next(counter)
        rows.append(tuple({{**base, "uid": f"{{i:032x}}", "ts": t0 + i * 0.001}}[n] for n in insert.names))
    with db.engine.begin() as conn:
        insert(conn, rows)
"""
CASES["log-chunk-overview-index"] = (_LOG_CHUNK.format(schema=()), "chunk()")
# the same index before migration 8 added the overview's filters (model, key_id, team_id) to it
CASES["log-chunk-overview-index-v6"] = (_LOG_CHUNK.format(schema=(
    "DROP INDEX ix_request_log_overview", "CREATE INDEX ix_request_log_overview ON request_log (ts, latency_ms, "
    "ttft_ms, status, error, cost_nano, prompt_tokens, completion_tokens, cache_hit)")), "chunk()")
CASES["log-chunk-ts-index"] = (_LOG_CHUNK.format(schema=(
    "DROP INDEX ix_request_log_overview", "CREATE INDEX ix_request_log_ts ON request_log (ts)")), "chunk()")

# one chat call of the bench's key through the full config's pipeline (bench/full_case.py): keys, limits and the
# request log's row queued; with the log off, and with the key's limits off, to price each
_FULL = f"import sys\nsys.path.insert(0, {str(BENCH_DIR)!r})\nfrom full_case import case\none = case({{}})\n"
CASES["full-call"] = (_FULL.format(""), "one()")
CASES["full-call-nolog"] = (_FULL.format("log=False"), "one()")
CASES["full-call-nolimits"] = (_FULL.format("limits=False"), "one()")

_RUNNER = """
import sys
{setup}
def _run(n):
    for _ in range(n):
        {stmt}
_run(50)  # warm: caches, specialisation
_run(int(sys.argv[1]))
"""


def count(setup: str, stmt: str, n: int, workdir: Path) -> int:
    script = workdir / "case.py"
    script.write_text(_RUNNER.format(setup=setup, stmt=stmt))
    out = workdir / f"cg-{n}.out"
    env = dict(os.environ, PYTHONPATH=str(REPO_DIR), PYTHONHASHSEED="0")
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, str(script),
                    str(n)], check=True, capture_output=True, env=env)
    m = re.search(r"^summary: (\d+)", out.read_text(errors="replace"), re.M)
    if m is None:
        raise SystemExit(f"no summary in {out}")
    return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # argparse formats help with %: a case named for a percentage (trace-sampled-5%) must not read as one
    ap.add_argument("cases", nargs="*", help=f"default: all of {', '.join(CASES)}".replace("%", "%%"))
    ap.add_argument("-n", type=int, default=2000, help="extra calls in the second run")
    ap.add_argument("--setup", default="", help="with --stmt: an ad-hoc case (the answer is in `body`)")
    ap.add_argument("--stmt", help="an ad-hoc statement to count")
    args = ap.parse_args()
    if args.stmt:
        CASES["ad-hoc"] = (_ANSWER + args.setup.replace("\\n", "\n"), args.stmt)
        args.cases = ["ad-hoc"]
    with tempfile.TemporaryDirectory(prefix="relaygate-micro-") as tmp:
        for name in args.cases or list(CASES):
            setup, stmt = CASES[name]
            low = count(setup, stmt, 100, Path(tmp))
            high = count(setup, stmt, 100 + args.n, Path(tmp))
            print(f"{name:<16} {(high - low) / args.n / 1000:8.2f}k instructions per call")


if __name__ == "__main__":
    main()
