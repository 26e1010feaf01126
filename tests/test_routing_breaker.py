"""Circuit breakers (in-process and in Redis, the same transitions), active health checks and
``GET /health/providers``; two gateway instances sharing Redis see one breaker state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import urllib3

from relaygate.config import BreakerConfig
from relaygate.routing.breaker import Breaker, Breakers
from relaygate.state.resp import RespClient
from relaygate.testing.base import BackgroundServer, free_port
from relaygate.testing.gateway import GatewayThread
from relaygate.testing.openai import OpenAIEmulatorOptions, create_app

from .conftest import UPSTREAM_KEY, require_service
from .routing_support import (
    MESSAGES,
    chat_requests,
    dep,
    emulators,
    fault,
    reset,
    sdk_client,
    unique,
    with_gateway,
)

REDIS_URL = "redis://127.0.0.1:6379/0"
COOLDOWN = 1.0  # end-to-end tests: long enough that a slow machine sends its calls within it
Start = Callable[..., GatewayThread]


def redis_up() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5).ping())
    except Exception:
        return False


@pytest.fixture(scope="module")
def emus() -> Iterator[list[BackgroundServer]]:
    with emulators({}, {}) as servers:
        yield servers


@pytest.fixture(autouse=True)
def clean(emus: list[BackgroundServer]) -> None:
    reset(emus)


# ---- the transitions, on both backends ---------------------------------------------------------------

def run_breaker(backend: str, settings: dict[str, Any], body: Callable[[Breaker], Awaitable[None]]) -> None:
    if backend == "redis" and not redis_up():
        require_service("redis")

    async def main() -> None:
        client = RespClient(REDIS_URL) if backend == "redis" else None
        breakers = Breakers(client)
        b = breakers.new(unique("unit"), BreakerConfig(**settings))
        assert b is not None
        try:
            await body(b)
        finally:
            if client is not None:
                await client.close()

    asyncio.run(main())


BACKENDS = ["local", "redis"]


async def fail(b: Breaker, n: int = 1) -> None:
    for _ in range(n):
        assert await b.admit()
        await b.record(False)


async def state(b: Breaker) -> str:
    return str((await b.snapshot())["state"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_breaker_opens_after_n_consecutive_failures(backend: str) -> None:
    async def body(b: Breaker) -> None:
        await fail(b, 2)
        assert await state(b) == "closed" and await b.admit()
        await b.record(False)
        assert await state(b) == "open"
        assert not await b.admit()
        assert 0 < b.retry_in() <= 5

    run_breaker(backend, {"failures": 3, "cooldown": 5}, body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_success_resets_the_consecutive_failures(backend: str) -> None:
    async def body(b: Breaker) -> None:
        await fail(b, 2)
        await b.record(True)
        await fail(b, 2)
        assert await state(b) == "closed"

    run_breaker(backend, {"failures": 3, "cooldown": 5}, body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_breaker_opens_on_the_failure_rate_over_its_window(backend: str) -> None:
    async def body(b: Breaker) -> None:
        for _ in range(4):  # 8 calls, half failed: under min_calls
            await b.record(True)
            await fail(b)
        assert await state(b) == "closed"
        await b.record(True)
        await fail(b)  # the 10th call: 5 of 10 failed
        assert await state(b) == "open"

    run_breaker(backend, {"failures": 100, "failure_rate": 0.5, "min_calls": 10, "window": 30}, body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_failure_rate_below_the_threshold_keeps_it_closed(backend: str) -> None:
    async def body(b: Breaker) -> None:
        for _ in range(30):
            for _ in range(3):
                await b.record(True)
            await fail(b)
        assert await state(b) == "closed"

    run_breaker(backend, {"failures": 100, "failure_rate": 0.5, "min_calls": 10, "window": 30}, body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_open_after_cooldown_admits_only_the_probes(backend: str) -> None:
    async def body(b: Breaker) -> None:
        await fail(b)
        assert not await b.admit()
        await asyncio.sleep(0.25)
        assert await b.admit() and await b.admit()
        assert await state(b) == "half_open"
        assert not await b.admit()  # a third call while two probes are out

    run_breaker(backend, {"failures": 1, "cooldown": 0.2, "probes": 2}, body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_good_probe_closes_it_and_a_bad_one_reopens_it(backend: str) -> None:
    async def body(b: Breaker) -> None:
        await fail(b)
        await asyncio.sleep(0.25)
        assert await b.admit()
        await b.record(False)
        assert await state(b) == "open" and not await b.admit()
        await asyncio.sleep(0.25)
        assert await b.admit()
        await b.record(True)
        assert await state(b) == "closed"
        assert await b.admit() and await b.admit()

    run_breaker(backend, {"failures": 1, "cooldown": 0.2}, body)


# ---- end to end --------------------------------------------------------------------------------------

def providers_body(gw: GatewayThread) -> dict[str, Any]:
    r = urllib3.request("GET", gw.url + "/health/providers", timeout=5)
    assert r.status == 200
    return dict(r.json())


def providers(gw: GatewayThread) -> dict[str, dict[str, Any]]:
    return {d["deployment"]: d for d in providers_body(gw)["deployments"]}


def ask(gw: GatewayThread, model: str = "m") -> Any:
    return sdk_client(gw.base_url).chat.completions.with_raw_response.create(model=model, messages=MESSAGES)


def two_deployments(bad: BackgroundServer, good: BackgroundServer, names: tuple[str, str],
                    **extra: Any) -> dict[str, Any]:
    return {"models": [{"name": "m", "breaker": {"failures": 3, "cooldown": COOLDOWN},
                        "deployments": [dep(bad, names[0]), dep(good, names[1])]}], **extra}


def test_breaker_opens_half_opens_and_closes_end_to_end(emus: list[BackgroundServer], start_gateway: Start) -> None:
    bad, good = emus
    fault(bad, status=500)
    gw = start_gateway(two_deployments(bad, good, ("bad", "good")))
    for _ in range(10):
        assert ask(gw).headers["x-relaygate-deployment"] == "good"
    assert chat_requests(bad) == 3  # then open: no more calls reach it
    body = providers_body(gw)
    report = {d["deployment"]: d for d in body["deployments"]}
    assert report["bad"]["breaker"]["state"] == "open" and report["bad"]["state"] == "open"
    assert report["bad"]["score"] == 0 and report["good"]["score"] > 50
    assert report["bad"]["score_parts"]["breaker"] == 0 and report["good"]["score_parts"]["breaker"] == 1
    # one model: its best deployment is the gateway's score; a deployment under 50 makes it degraded
    assert body["summary"] == {"deployments": 2, "healthy": 1, "status": "degraded",
                               "score": report["good"]["score"]}
    time.sleep(COOLDOWN + 0.05)
    for _ in range(5):
        ask(gw)
    assert chat_requests(bad) == 4  # one probe after the cool-down; it failed, so open again
    bad.state.faults = None
    time.sleep(COOLDOWN + 0.05)
    served = [ask(gw).headers["x-relaygate-deployment"] for _ in range(6)]
    assert "bad" in served and providers(gw)["bad"]["breaker"]["state"] == "closed"
    assert served.count("bad") >= 2  # closed again: back in the rotation


def test_health_providers_reports_every_deployment(emus: list[BackgroundServer], start_gateway: Start) -> None:
    gw = start_gateway(two_deployments(emus[0], emus[1], ("a", "b")))
    for _ in range(4):
        ask(gw)
    report = providers(gw)
    assert set(report) == {"a", "b"}
    a = report["a"]
    assert {"deployment", "model", "provider", "state", "breaker", "latency_ms", "error_rate", "in_flight",
            "requests", "failures", "score", "score_parts", "baseline_latency_ms"} <= set(a)
    assert a["state"] == "healthy" and a["breaker"]["state"] == "closed" and a["requests"] == 2
    assert a["latency_ms"] > 0 and a["error_rate"] == 0 and a["in_flight"] == 0 and 50 <= a["score"] <= 100


def test_two_instances_sharing_redis_see_the_same_breaker(emus: list[BackgroundServer], start_gateway: Start) -> None:
    if not redis_up():
        require_service("redis")
    bad, good = emus
    fault(bad, status=500)
    names = (unique("bad"), unique("good"))
    cfg = two_deployments(bad, good, names, state={"redis_url": REDIS_URL})
    one, two = start_gateway(cfg), start_gateway(cfg)
    for _ in range(6):
        ask(one)
    assert chat_requests(bad) == 3
    assert providers(two)[names[0]]["breaker"]["state"] == "open"  # opened by the other instance
    for _ in range(6):
        assert ask(two).headers["x-relaygate-deployment"] == names[1]
    assert chat_requests(bad) == 3  # the second instance never called it
    bad.state.faults = None
    time.sleep(COOLDOWN + 0.05)
    for _ in range(4):
        ask(two)  # its probe succeeds and closes the shared breaker
    assert providers(one)[names[0]]["breaker"]["state"] == "closed"


def test_unhealthy_deployment_leaves_the_rotation_and_comes_back(emus: list[BackgroundServer],
                                                                 start_gateway: Start) -> None:
    port = free_port()
    dead = {"name": "later", "provider": "openai", "model": "gpt-4o-mini", "api_base": f"http://127.0.0.1:{port}/v1",
            "api_key": UPSTREAM_KEY, "timeout": 5}
    gw = start_gateway({"models": [{"name": "m", "health_check": {"interval": 0.1, "timeout": 1,
                                                                  "unhealthy_after": 1},
                                    "deployments": [dead, dep(emus[1], "up")]}]})
    wait_for(lambda: providers(gw)["later"]["state"] == "unhealthy")
    assert "unreachable" in providers(gw)["later"]["health_check"]["last_error"]
    for _ in range(4):
        raw = ask(gw)
        assert raw.headers["x-relaygate-deployment"] == "up" and raw.headers["x-relaygate-attempts"] == "1"
    with BackgroundServer(create_app(OpenAIEmulatorOptions(api_key=UPSTREAM_KEY)), port=port):
        wait_for(lambda: providers(gw)["later"]["state"] == "healthy")
        served = [ask(gw).headers["x-relaygate-deployment"] for _ in range(4)]
        assert served.count("later") == 2


def test_health_checks_stop_with_the_gateway(emus: list[BackgroundServer]) -> None:
    from relaygate.config import parse_config
    from relaygate.gateway import Gateway

    async def main() -> tuple[int, int]:
        cfg = parse_config({"models": [{"name": "m", "health_check": {"interval": 0.05},
                                        "deployments": [dep(emus[0], "x")]}]}, {})
        gw = await Gateway.create(cfg)
        await asyncio.sleep(0.3)
        tasks = list(gw.health.tasks)
        await gw.close()
        return sum(1 for t in tasks if not t.done()), gw.deployments()[0].stats.probe_successes

    running, probes = asyncio.run(main())
    assert running == 0 and probes >= 2


def wait_for(cond: Callable[[], bool], limit: float = 5.0) -> None:
    end = time.monotonic() + limit
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def test_a_stream_cut_after_its_first_byte_counts_against_the_breaker_but_a_client_leaving_does_not(
        emus: list[BackgroundServer]) -> None:
    from relaygate.core.call import Call, Route
    from relaygate.server.http import ClientGone

    cfg = {"models": [{"name": "m", "breaker": {"enabled": True, "failures": 2, "cooldown": 60},
                       "deployments": [dep(emus[0], "s")]}]}

    async def stream(gw: Any, end: BaseException | None) -> None:
        call = Call(id="t", route=Route.CHAT, model="m", body={"model": "m", "messages": MESSAGES, "stream": True},
                    stream=True)
        reply = await gw.handle(call)
        error = end
        try:
            async for _ in reply.stream:
                pass
        except Exception as e:
            error = e
        reply.finish(error)

    async def body(gw: Any) -> tuple[int, str]:
        b = gw.deployments()[0].breaker
        for _ in range(3):
            await stream(gw, ClientGone())  # the client went away: nothing wrong with the deployment
        assert b.fails == 0
        fault(emus[0], disconnect_after_chunks=2)
        for _ in range(2):
            await stream(gw, None)
        return b.fails, str((await b.snapshot())["state"])

    assert with_gateway(cfg, body) == (2, "open")


def test_an_unreachable_redis_leaves_each_breaker_working_in_process() -> None:
    """No Redis at all: a breaker routes from its own state, without waiting, and still opens on failures."""
    async def main() -> list[bool]:
        client = RespClient(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
        breakers = Breakers(client)
        b = breakers.new(unique("down"), BreakerConfig(failures=2))
        assert b is not None
        try:
            admitted = [await b.admit()]
            await b.record(False)
            admitted.append(await b.admit())
            await b.record(False)  # the second failure in a row opens it, here
            admitted.append(await b.admit())
            return admitted
        finally:
            await client.close()

    assert asyncio.run(main()) == [True, True, False]


def test_breakers_go_on_from_their_last_view_while_redis_is_black_holed_and_follow_it_after() -> None:
    """Redis accepting but never answering: breakers answer within the client's timeout once, then from
    their local view (one failure seen in Redis + one during the outage opens a breaker of 2); once Redis
    answers again its shared state is the one that counts."""
    from relaygate.testing.tcpproxy import TcpProxy

    if not redis_up():
        require_service("redis")
    with TcpProxy("127.0.0.1", 6379) as proxy:
        async def main() -> tuple[list[Any], float]:
            client = RespClient(f"redis://127.0.0.1:{proxy.port}/0", timeout=0.05, retry=0.25)
            b = Breakers(client).new(unique("hole"), BreakerConfig(failures=2, cooldown=30))
            assert b is not None
            try:
                seen: list[Any] = [await b.admit()]
                await b.record(False)  # in Redis: 1 consecutive failure
                proxy.black_hole()
                started = time.monotonic()
                await b.record(False)  # Redis times out: counted here, from the last view (1 + 1)
                slowest = time.monotonic() - started
                seen += [b.state, await b.admit()]
                await asyncio.sleep(0.01)  # the client's loop closes the abandoned connection; then the network heals
                proxy.restore()
                deadline = time.monotonic() + 5
                while client.down and time.monotonic() < deadline:
                    await b.admit()  # asks Redis (at once while down): the probe finds it back
                    await asyncio.sleep(0.05)
                seen += [client.down, await state(b)]
                return seen, slowest
            finally:
                await client.close()

        seen, slowest = asyncio.run(main())
    assert seen == [True, 1, False, False, "closed"]  # Redis never saw the second failure
    assert slowest < 0.5


def test_a_timeout_caused_by_the_gateways_own_waiting_never_counts_against_the_upstream(
        emus: list[BackgroundServer]) -> None:
    """An upstream that answers in 300 ms: a call whose deadline the gateway had almost used up before the
    attempt (100 ms left of 2 s) times out, and the breaker does not count it; a call that gave the upstream
    its whole time (200 ms of 200 ms) times out, and the breaker counts that one."""
    from relaygate.core.call import Call, Route
    from relaygate.core.errors import UpstreamTimeout
    from relaygate.routing.router import attempt

    fault(emus[0], latency_ms=300)
    cfg = {"models": [{"name": "m", "deployments": [dep(emus[0], unique("starved")), dep(emus[1], unique("ok"))],
                       "breaker": {"failures": 1}}]}

    async def body(gw: Any) -> list[int]:
        d = gw.table.models["m"][0]
        fails = []
        for used, left in ((1.9, 0.1), (0.0, 0.2)):
            now = time.monotonic()
            call = Call(id="t", route=Route.CHAT, model="m", body={"model": "m", "messages": MESSAGES},
                        started=now - used, deadline=now + left)
            with pytest.raises(UpstreamTimeout):
                await attempt(d, call)
            fails.append(d.breaker.fails)
        return fails

    assert with_gateway(cfg, body) == [0, 1]
