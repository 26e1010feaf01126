"""``relaygate serve --workers N``: N processes on one port under a supervisor that replaces a dead one and
drains them all on SIGTERM; limits stay exact across workers on Redis; per-process state with several
workers is refused at start. Real processes on 127.0.0.1, each test bounded well under a minute."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import redis as redis_lib
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from relaygate.observability.chaos_shared import SYNC_INTERVAL
from relaygate.testing.base import BackgroundServer

from .conftest import inside_one_minute, openai_model, require_service
from .process_support import REPO, GatewayProcess, gateway_process
from .test_keys import MASTER
from .test_limits import REDIS_URL, _burst
from .test_requestlog import log_rows
from .test_shutdown import LONG, StreamReader, chat, wait_refused

DEMO = {"name": "demo", "deployments": [{"provider": "demo", "model": "demo"}]}


def pids_serving(gw: GatewayProcess, want: int, within: float = 15.0) -> set[int]:
    """The pids answering ``/health`` on fresh connections, until ``want`` distinct ones answered."""
    seen: set[int] = set()
    deadline = time.monotonic() + within
    while len(seen) < want and time.monotonic() < deadline:
        gw.workers_seen.clear()

        async def round_() -> None:
            await asyncio.gather(*(asyncio.to_thread(gw.healthy) for _ in range(8)))

        asyncio.run(round_())
        seen |= gw.workers_seen
    gw.workers_seen |= seen
    return seen


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_workers_share_one_port_and_a_killed_worker_is_replaced(tmp_path: Path) -> None:
    with gateway_process(tmp_path, {"models": [DEMO]}, args=("--workers", "2")) as gw:
        first = pids_serving(gw, 2)
        assert len(first) == 2 and gw.proc.pid not in first  # the supervisor itself serves nothing
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while alive(victim) and time.monotonic() < deadline:
            time.sleep(0.05)
        now = pids_serving(gw, 2)
        assert len(now) == 2 and victim not in now and (now - first), (first, now)
        assert "worker 0" in gw.output() or "worker 1" in gw.output()
        assert "exited with signal SIGKILL; starting another" in gw.output()
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(20) == 0
        assert not gw.accepts()
        for pid in now:
            assert not alive(pid)


def test_sigterm_drains_the_streams_of_every_worker(openai_emulator: BackgroundServer, tmp_path: Path) -> None:
    requests.post(openai_emulator.url + "/_emulator/faults", json={"chunk_delay_ms": 200}, timeout=5)
    words = LONG  # 45 chunks 0.2 s apart: ~9 s a stream, so that all 200 are in flight at SIGTERM
    with gateway_process(tmp_path, {"models": [openai_model("s", openai_emulator, timeout=60)],
                                    "server": {"drain_timeout": 20}}, args=("--workers", "2")) as gw:
        readers = [StreamReader() for _ in range(200)]

        async def scenario() -> None:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                             timeout=aiohttp.ClientTimeout(total=60)) as s:
                tasks = [asyncio.ensure_future(r.run(s, gw.url, chat("s", words, True))) for r in readers]
                await asyncio.wait_for(asyncio.gather(*(r.started.wait() for r in readers)), 30)
                assert not any(t.done() for t in tasks)  # all 200 in flight
                gw.proc.send_signal(signal.SIGTERM)
                await wait_refused(gw, within=5)  # new connections refused once every worker closed
                await asyncio.wait_for(asyncio.gather(*tasks), 40)

        asyncio.run(scenario())
        assert gw.proc.wait(20) == 0
    unfinished = [(len(r.events), r.error()) for r in readers if r.events[-1][1] != "[DONE]" or r.error()]
    assert not unfinished, unfinished[:5]
    rows = log_rows(f"sqlite:///{tmp_path}/gateway.db")
    assert len(rows) == 200 and {(r["status"], r["error"]) for r in rows} == {(200, None)}


def serve_refused(tmp_path: Path, config: dict[str, object], *args: str) -> str:
    cfg = tmp_path / "refused.yaml"
    cfg.write_text(yaml.safe_dump({"database": {"url": f"sqlite:///{tmp_path}/r.db"}, **config}))
    done = subprocess.run([sys.executable, "-m", "relaygate", "serve", "--config", str(cfg), "--port", "1", *args],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, timeout=60, text=True)
    assert done.returncode == 1, done.stdout + done.stderr
    return done.stderr


def test_workers_without_redis_are_refused_where_a_limit_would_multiply(openai_emulator: BackgroundServer,
                                                                      tmp_path: Path) -> None:
    two = [openai_model("a", openai_emulator), openai_model("b", openai_emulator)]
    two[1]["deployments"].append(dict(two[1]["deployments"][0]))  # two deployments: breakers on
    two[0]["deployments"][0]["rpm"] = 100
    err = serve_refused(tmp_path, {"models": two, "auth": {"master_key": MASTER}}, "--workers", "3")
    assert "server.workers: 3 workers, but auth: virtual keys' rpm, tpm, parallel and budget limits" in err
    assert "server.workers: 3 workers, but models[1].breaker: model 'b' has circuit breakers" in err
    assert "server.workers: 3 workers, but models[0].deployments[0]: rpm are counted in each process" in err
    assert "set state.redis_url" in err
    # from the config file as well; with Redis only the deployment limit is left to refuse
    err = serve_refused(tmp_path, {"models": two, "auth": {"master_key": MASTER}, "state": {"redis_url": REDIS_URL},
                                   "server": {"workers": 2}})
    assert "models[0].deployments[0]: rpm" in err and ".breaker:" not in err and "auth:" not in err
    assert "remove the deployments' rpm/tpm/max_parallel limits" in err and "redis_url" not in err


def need_redis() -> None:
    try:
        redis_lib.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis_lib.RedisError:
        require_service("redis")


def test_a_key_limit_is_exact_across_two_workers_on_redis_and_a_reload_reaches_both(openai_emulator: BackgroundServer,
                                                          tmp_path: Path) -> None:
    need_redis()
    secret = "sk-" + os.urandom(16).hex()
    config = {"models": [openai_model("m", openai_emulator)], "state": {"redis_url": REDIS_URL},
              "auth": {"master_key": MASTER, "keys": [{"id": f"w{os.getpid()}-{time.time_ns()}", "key": secret,
                                                        "rpm": 10}]}}
    with gateway_process(tmp_path, {**config, "server": {"watch_config": False}}, args=("--workers", "2")) as gw:
        pids = pids_serving(gw, 2)
        assert len(pids) == 2
        inside_one_minute()
        results = asyncio.run(_burst([gw.url + "/v1/chat/completions"], secret, 30))
        # a reload asked of one worker reaches the other through the supervisor (SIGHUP)
        before = {gw.config_of[p] for p in pids}
        cfg = tmp_path / "gateway.yaml"
        changed = yaml.safe_load(cfg.read_text())
        changed["models"].append({**changed["models"][0], "name": "added"})
        cfg.write_text(yaml.safe_dump(changed))
        r = requests.post(gw.url + "/admin/reload", headers={"authorization": f"Bearer {MASTER}"}, timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "reloaded", r.text
        new_hash = r.json()["config"]["hash"]
        assert len(before) == 1 and new_hash not in before

        def both_reloaded() -> bool:
            pids_serving(gw, 2, within=3)
            return {gw.config_of[p] for p in pids} == {new_hash}

        deadline = time.monotonic() + 15
        while not both_reloaded():
            assert time.monotonic() < deadline, gw.config_of
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(20) == 0
    assert sorted(s for s, _ in results) == [200] * 10 + [429] * 20
    assert "applying database migration 1" in gw.output()
    assert gw.output().count("applying database migration 1") == 1  # once, by the supervisor


def faults_by_worker(gw: GatewayProcess) -> dict[str, float]:
    """relaygate_faults_injected_total per worker, from the port's /metrics (every worker's samples)."""
    text = requests.get(gw.url + "/metrics", headers={"authorization": f"Bearer {MASTER}"}, timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "relaygate_faults_injected_total":
                out[s.labels["worker"]] = out.get(s.labels["worker"], 0.0) + s.value
    return out


def test_a_chaos_rule_set_through_the_admin_api_holds_in_every_worker(openai_emulator: BackgroundServer,
                                                                      tmp_path: Path) -> None:
    need_redis()
    config = {"models": [openai_model("m", openai_emulator)], "state": {"redis_url": REDIS_URL},
              "auth": {"master_key": MASTER}, "chaos": {"enabled": True}, "server": {"watch_config": False}}
    admin = {"authorization": f"Bearer {MASTER}"}
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    key = None
    try:
        with gateway_process(tmp_path, config, args=("--workers", "2")) as gw:
            key = "relaygate:chaos:" + requests.get(gw.url + "/health", timeout=10).json()["config"]["hash"]
            assert len(pids_serving(gw, 2)) == 2
            r = requests.post(gw.url + "/admin/chaos", headers=admin, timeout=10,
                              json={"name": "drill", "model": "m", "fault": "error", "status": 503})
            assert r.status_code == 201, r.text
            time.sleep(3 * SYNC_INTERVAL)  # the other worker's next look at the shared set
            deadline = time.monotonic() + 20
            while len(faults_by_worker(gw)) < 2:  # both workers injected (their metrics say so)
                assert time.monotonic() < deadline, faults_by_worker(gw)
                results = asyncio.run(_burst([gw.url + "/v1/chat/completions"], MASTER, 30, body))
                assert {(s, h.get("x-relaygate-fault")) for s, h in results} == {(503, "drill")}
                time.sleep(1.0)  # the workers' metrics files are written once a second
            # switched off through one worker: off in both
            r = requests.patch(gw.url + "/admin/chaos/drill", headers=admin, json={"enabled": False}, timeout=10)
            assert r.status_code == 200 and r.json()["enabled"] is False
            time.sleep(3 * SYNC_INTERVAL)
            before = faults_by_worker(gw)
            results = asyncio.run(_burst([gw.url + "/v1/chat/completions"], MASTER, 30, body))
            assert [s for s, _ in results] == [200] * 30
            time.sleep(1.5)
            assert faults_by_worker(gw) == before
            gw.proc.send_signal(signal.SIGTERM)
            assert gw.proc.wait(20) == 0
        assert gw.output().count("chaos rules taken from the shared set (1): drill") >= 2  # the other, twice
    finally:
        if key is not None:
            redis_lib.Redis.from_url(REDIS_URL).delete(key)
