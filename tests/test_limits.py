"""Limits per key, team and user under concurrency, in-process and in Redis; budgets settle to the log exactly."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis as redis_lib
import requests
import yaml

from relaygate.limits.periods import period
from relaygate.testing.base import BackgroundServer, free_port
from tests.conftest import StartGateway, inside_one_minute, openai_model, require_service
from tests.test_keys import MASTER, Admin
from tests.test_requestlog import gateway_rows

REPO = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("RELAYGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")
BODY = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 10}


@pytest.fixture(params=["memory", "redis"])
def state(request) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The ``state`` config section of each limits backend."""
    if request.param == "memory":
        return {}
    try:
        redis_lib.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis_lib.RedisError:
        require_service("redis")
    return {"redis_url": REDIS_URL}


def gateway(start_gateway: Any, emulator: Any, state: dict[str, Any], **auth: Any) -> Any:
    return start_gateway({"models": [openai_model("m", emulator), openai_model("other", emulator)], "state": state,
                          "auth": {"master_key": MASTER, **auth}})


async def _burst(urls: list[str], key: str, n: int, body: dict[str, Any] = BODY) -> list[tuple[int, Any]]:
    """``n`` concurrent calls spread over ``urls``: (status, headers) each."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        async def one(i: int) -> tuple[int, Any]:
            async with s.post(urls[i % len(urls)], json=body, headers={"authorization": f"Bearer {key}"}) as r:
                await r.read()
                return r.status, r.headers
        return await asyncio.gather(*(one(i) for i in range(n)))


def burst(gw: Any, key: str, n: int, body: dict[str, Any] = BODY) -> list[tuple[int, Any]]:
    return asyncio.run(_burst([gw.base_url + "/chat/completions"], key, n, body))


def new_key(gw: Any, **fields: Any) -> dict[str, Any]:
    r = Admin(gw)("POST", "/keys", fields)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def test_requests_per_minute_hold_under_concurrency(
        openai_emulator: BackgroundServer, start_gateway: StartGateway, state: dict[str, Any]) -> None:
    inside_one_minute()
    gw = gateway(start_gateway, openai_emulator, state)
    key = new_key(gw, rpm=5)
    results = burst(gw, key["key"], 20)
    assert sorted(s for s, _ in results) == [200] * 5 + [429] * 15
    refused = next(h for s, h in results if s == 429)
    assert refused["x-ratelimit-limit-requests"] == "5" and refused["x-ratelimit-remaining-requests"] == "0"
    assert 0 < int(refused["retry-after"]) <= 60
    ok = next(h for s, h in results if s == 200)
    assert ok["x-ratelimit-limit-requests"] == "5" and int(ok["x-ratelimit-remaining-requests"]) < 5
    assert "x-ratelimit-reset-requests" in refused and "x-ratelimit-reset-requests" not in ok
    # the key's headers replace the upstream's (the emulator sends its own 10000), never sit beside them
    assert ok.getall("x-ratelimit-limit-requests") == ["5"] and len(ok.getall("x-ratelimit-remaining-requests")) == 1


def test_streamed_replies_carry_the_keys_rate_headers(
        openai_emulator: BackgroundServer, start_gateway: StartGateway, state: dict[str, Any]) -> None:
    inside_one_minute()
    gw = gateway(start_gateway, openai_emulator, state)
    key = new_key(gw, rpm=50, tpm=100000)
    status, headers = burst(gw, key["key"], 1, {**BODY, "stream": True})[0]
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert headers.getall("x-ratelimit-limit-requests") == ["50"] and headers["x-ratelimit-remaining-requests"] == "49"
    assert headers["x-ratelimit-limit-tokens"] == "100000" and int(headers["x-ratelimit-remaining-tokens"]) < 100000


def test_parallel_cap_holds_and_frees_slots(
        openai_emulator: BackgroundServer, start_gateway: StartGateway, state: dict[str, Any]) -> None:
    gw = gateway(start_gateway, openai_emulator, state)
    key = new_key(gw, max_parallel=3)
    requests.post(openai_emulator.url + "/_emulator/faults", json={"latency_ms": 300}, timeout=5)
    results = burst(gw, key["key"], 10)
    assert sorted(s for s, _ in results) == [200] * 3 + [429] * 7
    assert next(h for s, h in results if s == 429)["retry-after"] == "1"
    requests.delete(openai_emulator.url + "/_emulator/faults", timeout=5)
    assert [s for s, _ in burst(gw, key["key"], 3)] == [200] * 3  # every slot came back


def test_tokens_per_minute_count_real_usage(
        openai_emulator: BackgroundServer, start_gateway: StartGateway, state: dict[str, Any]) -> None:
    inside_one_minute()
    gw = gateway(start_gateway, openai_emulator, state)
    key = new_key(gw, tpm=60)  # each call reserves ~17 tokens and uses 9 (5 prompt + 4 completion)
    statuses = [s for s, _ in burst(gw, key["key"], 12)]
    assert 3 <= statuses.count(200) <= 6
    refused = [h for s, h in burst(gw, key["key"], 1)]
    assert refused[0]["x-ratelimit-limit-tokens"] == "60"


def test_team_limits_bind_all_its_keys_together(
        openai_emulator: BackgroundServer, start_gateway: StartGateway, state: dict[str, Any]) -> None:
    """Also: a team id may be any text; in Redis its keys are sent with their length in bytes (a length in
    characters would break the protocol, and the limiter would then let every call through)."""
    inside_one_minute()
    gw = gateway(start_gateway, openai_emulator, state)
    team = "équipe-" + os.urandom(4).hex()
    assert Admin(gw)("POST", "/teams", {"id": team, "rpm": 6, "budget_usd": 1000}).status_code == 201
    a, b = new_key(gw, team_id=team), new_key(gw, team_id=team)

    async def both() -> list[tuple[int, Any]]:
        url = [gw.base_url + "/chat/completions"]
        ra, rb = await asyncio.gather(_burst(url, a["key"], 8), _burst(url, b["key"], 8))
        return ra + rb

    statuses = [s for s, _ in asyncio.run(both())]
    assert statuses.count(200) == 6 and statuses.count(429) == 10


def test_budget_holds_under_200_concurrent_calls_and_spend_matches_the_log(
        openai_emulator: BackgroundServer, start_gateway: StartGateway, state: dict[str, Any]) -> None:
    gw = gateway(start_gateway, openai_emulator, state)
    probe = new_key(gw)
    burst(gw, probe["key"], 1)
    one_call = gateway_rows(gw)[0]["cost_nano"]
    assert one_call > 0
    budget_usd = 50 * one_call / 1e9
    key = new_key(gw, budget_usd=budget_usd, budget_period="day", rpm=100000)
    results = burst(gw, key["key"], 200)
    ok = [s for s, _ in results].count(200)
    assert 0 < ok <= 50
    refused = [h for s, h in results if s != 200]
    assert len(refused) == 200 - ok
    assert all(h["x-ratelimit-limit-requests"] == "100000" and int(h["retry-after"]) > 0 for h in refused)
    # once the burst settled, the rest of the budget can still be used, but never beyond it
    later = 0
    for _ in range(60):
        if burst(gw, key["key"], 1)[0][0] != 200:
            break
        later += 1
    assert ok + later <= 50
    rows = [r for r in gateway_rows(gw, expected=202 + later) if r["key_id"] == key["id"]]
    assert len(rows) == 201 + later and sum(r["status"] == 200 for r in rows) == ok + later
    logged = sum(r["cost_nano"] for r in rows)
    assert logged == (ok + later) * one_call <= round(budget_usd * 1e9)
    assert wait_for_spent(gw, "key:" + key["id"], logged) == logged


def wait_for_spent(gw: Any, scope: str, expected: int) -> int:
    """The settled spend the limiter holds for ``scope`` today (Redis settles in background tasks)."""
    limiter = gw.gateway.limiter
    pid = period("day", time.time())[0]
    deadline = time.monotonic() + 5
    while True:
        got = gw.run(limiter.known_spend([(scope, pid)]))[0] or 0
        if got == expected or time.monotonic() > deadline:
            return int(got)
        time.sleep(0.05)


def test_admin_shows_each_keys_spend_this_period_and_what_is_left(
        openai_emulator: BackgroundServer, start_gateway: StartGateway, state: dict[str, Any],
        tmp_path: Path) -> None:
    db = {"url": f"sqlite:///{tmp_path}/spend.db"}
    cfg = {"models": [openai_model("m", openai_emulator)], "database": db, "state": state,
           "auth": {"master_key": MASTER}}
    gw = start_gateway(cfg)
    admin = Admin(gw)
    daily = new_key(gw, budget_usd=0.01, budget_period="day")
    unlimited = new_key(gw)
    unused = new_key(gw, budget_usd=2, budget_period="month")
    for key in (daily, daily, unlimited):
        assert burst(gw, key["key"], 1)[0][0] == 200
    one_call = gateway_rows(gw, expected=3)[0]["cost_nano"]
    assert one_call > 0
    day = period("day", time.time())
    deadline = time.monotonic() + 5  # Redis settles in background tasks
    while (view := admin("GET", f"/keys/{daily['id']}").json())["spend_usd"] != 2 * one_call / 1e9:
        assert time.monotonic() < deadline, view
        time.sleep(0.05)
    assert view["budget_remaining_usd"] == (10_000_000 - 2 * one_call) / 1e9
    assert (view["budget_period_start"], view["budget_period_end"]) == (day[1], day[2])
    listed = {k["id"]: k for k in admin("GET", "/keys").json()["data"]}
    assert listed[daily["id"]]["spend_usd"] == view["spend_usd"]
    assert {f: listed[unlimited["id"]][f] for f in ("spend_usd", "budget_remaining_usd", "budget_period_start",
                                                     "budget_period_end")} == {
        "spend_usd": one_call / 1e9, "budget_remaining_usd": None, "budget_period_start": None,
        "budget_period_end": None}  # no budget: the whole log
    month = period("month", time.time())
    assert {f: listed[unused["id"]][f] for f in ("spend_usd", "budget_remaining_usd", "budget_period_start",
                                                  "budget_period_end")} == {
        "spend_usd": 0.0, "budget_remaining_usd": 2.0, "budget_period_start": month[1], "budget_period_end": month[2]}
    # another instance of the same deployment: its limiter holds nothing yet (in-process) and reads the log,
    # or shares Redis's figure
    gw2 = start_gateway(cfg)
    assert Admin(gw2)("GET", f"/keys/{daily['id']}").json()["spend_usd"] == 2 * one_call / 1e9


def test_budget_spent_before_a_restart_still_counts(
        openai_emulator: BackgroundServer, start_gateway: StartGateway, tmp_path: Path) -> None:
    db = {"url": f"sqlite:///{tmp_path}/restart.db"}
    cfg = {"models": [openai_model("m", openai_emulator)], "database": db, "auth": {"master_key": MASTER}}
    gw = start_gateway(cfg)
    key = new_key(gw, budget_usd=1e-9 * 10_000_000)
    assert burst(gw, key["key"], 1)[0][0] == 200
    spent = gateway_rows(gw)[0]["cost_nano"]
    gw.stop()
    gw2 = start_gateway(cfg)
    from relaygate.gateway import spent_loader

    assert gw2.run(spent_loader(gw2.gateway.reads)("key:" + key["id"], 0.0)) == spent


def test_two_gateway_processes_sharing_redis_enforce_one_limit(
        openai_emulator: BackgroundServer, tmp_path: Path) -> None:
    try:
        redis_lib.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis_lib.RedisError:
        require_service("redis")
    db = {"url": f"sqlite:///{tmp_path}/two.db"}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"models": [openai_model("m", openai_emulator)], "database": db,
                                   "state": {"redis_url": REDIS_URL}, "auth": {"master_key": MASTER}}))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    made = subprocess.run([sys.executable, "-m", "relaygate", "keys", "--config", str(cfg), "create", "--rpm", "10"],
                          env=env, capture_output=True, timeout=60, check=True)
    key = yaml.safe_load(made.stdout)["key"]
    ports = [free_port(), free_port()]
    procs = [subprocess.Popen([sys.executable, "-m", "relaygate", "serve", "--config", str(cfg), "--port", str(p)],
                              env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for p in ports]
    try:
        for p in ports:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    if requests.get(f"http://127.0.0.1:{p}/health/ready", timeout=1).ok:
                        break
                except requests.ConnectionError:
                    pass
                time.sleep(0.05)
        inside_one_minute()
        urls = [f"http://127.0.0.1:{p}/v1/chat/completions" for p in ports]
        results = asyncio.run(_burst(urls, key, 30))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
    assert sorted(s for s, _ in results) == [200] * 10 + [429] * 20


def test_budget_periods_reset_on_utc_day_and_month_boundaries() -> None:
    import calendar

    dec31 = calendar.timegm((2025, 12, 31, 23, 59, 59))
    assert period("day", dec31) == ("d20251231", dec31 - 86399, dec31 + 1)
    pid, start, end = period("month", dec31)
    assert (pid, start, end) == ("m202512", calendar.timegm((2025, 12, 1, 0, 0, 0)), dec31 + 1)
    assert period("day", dec31 + 1)[0] == "d20260101" and period("month", dec31 + 1)[0] == "m202601"
    assert period("total", dec31) == ("t", 0.0, None)


def test_user_limits_apply_to_the_users_keys(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    inside_one_minute()
    gw = gateway(start_gateway, openai_emulator, {})
    user = "u-" + os.urandom(4).hex()
    assert Admin(gw)("POST", "/users", {"id": user, "max_parallel": 1, "models": ["m"]}).status_code == 201
    key = new_key(gw, user_id=user)
    requests.post(openai_emulator.url + "/_emulator/faults", json={"latency_ms": 200}, timeout=5)
    assert sorted(s for s, _ in burst(gw, key["key"], 4)) == [200, 429, 429, 429]
    assert burst(gw, key["key"], 1, {**BODY, "model": "other"})[0][0] == 403


def test_limits_count_in_process_at_once_when_redis_is_unreachable(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    """No Redis: rpm is counted in this process (one call of three) and a budget is refused with a 503, both
    without waiting on Redis."""
    gw = gateway(start_gateway, openai_emulator, {"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    inside_one_minute()
    key = new_key(gw, rpm=1)
    budgeted = new_key(gw, budget_usd=1.0)
    started = time.monotonic()
    assert sorted(s for s, _ in burst(gw, key["key"], 3)) == [200, 429, 429]
    refused = requests.post(gw.base_url + "/chat/completions", json=BODY, timeout=10,
                            headers={"authorization": f"Bearer {budgeted['key']}"})
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "budget_unavailable"
    assert time.monotonic() - started < 2


def test_redis_limits_survive_redis_forgetting_the_script() -> None:
    """The acquire command is sent pre-encoded by EVALSHA; after SCRIPT FLUSH (a Redis restart) the limiter
    loads the script again and keeps counting in the same keys."""
    from relaygate.auth.principal import Limits, Scope
    from relaygate.limits.redis import RedisLimiter
    from relaygate.state.resp import RespClient

    try:
        r = redis_lib.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        r.ping()
    except redis_lib.RedisError:
        require_service("redis")
    scope = Scope(name=f"key:flush-{os.urandom(4).hex()}", limits=Limits(rpm=3, tpm=1000))
    inside_one_minute(3)

    async def main() -> list[Any]:
        async def no_spend(name: str, start: float) -> int:
            return 0

        client = RespClient(REDIS_URL)
        lim = RedisLimiter(client, no_spend, slot_ttl=60)
        try:
            first = await lim.acquire((scope,), 10, 0)
            r.script_flush()
            second = await lim.acquire((scope,), 10, 0)
            third = await lim.acquire((scope,), 10, 0)
            with pytest.raises(Exception) as refused:
                await lim.acquire((scope,), 10, 0)
            return [first, second, third, refused.value]
        finally:
            await lim.close()
            await client.close()

    first, second, third, refused = asyncio.run(main())
    assert dict(first.headers)[b"x-ratelimit-remaining-requests"] == b"2"
    assert dict(second.headers)[b"x-ratelimit-remaining-requests"] == b"1"
    assert dict(third.headers)[b"x-ratelimit-remaining-requests"] == b"0"
    assert dict(third.headers)[b"x-ratelimit-remaining-tokens"] == b"970"
    assert getattr(refused, "status", None) == 429


def test_rate_headers_go_as_lines_to_the_gateways_server_and_as_pairs_to_another() -> None:
    """The key's x-ratelimit-* headers are made in wire form once (Limits' template); the gateway's own server
    writes them as they are (the ASGI extension it names in the scope), another gets (name, value) pairs."""
    from relaygate.auth.principal import Limits
    from relaygate.limits.base import rate_headers
    from relaygate.server.http import HEAD_LINES, start_message

    lines = rate_headers(Limits(rpm=5, tpm=100), 2, 30)
    assert lines == (b"x-ratelimit-limit-requests: 5\r\nx-ratelimit-remaining-requests: 3\r\n"
                     b"x-ratelimit-limit-tokens: 100\r\nx-ratelimit-remaining-tokens: 70\r\n")
    assert rate_headers(Limits(rpm=5), 7, 0) == b"x-ratelimit-limit-requests: 5\r\nx-ratelimit-remaining-requests: 0\r\n"
    assert rate_headers(Limits(tpm=100), 1, 150) == b"x-ratelimit-limit-tokens: 100\r\nx-ratelimit-remaining-tokens: 0\r\n"
    assert rate_headers(Limits(max_parallel=2), 1, 1) == b""
    ours = start_message(200, [(b"content-type", b"application/json")], lines, {"extensions": {HEAD_LINES: {}}})
    assert ours["headers"] == [(b"content-type", b"application/json")] and ours[HEAD_LINES] == lines
    other = start_message(200, [(b"content-type", b"application/json")], lines, {"type": "http"})
    assert HEAD_LINES not in other
    assert other["headers"] == [(b"content-type", b"application/json"), (b"x-ratelimit-limit-requests", b"5"),
                                (b"x-ratelimit-remaining-requests", b"3"), (b"x-ratelimit-limit-tokens", b"100"),
                                (b"x-ratelimit-remaining-tokens", b"70")]
