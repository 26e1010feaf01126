"""Each routing strategy's distribution over 1,000 calls matches its definition (statistical bounds).

The Router is driven in-process (a real Gateway, real providers, three OpenAI emulators over HTTP):
the HTTP server in front adds nothing to what a strategy decides.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import pytest

from relaygate.config import BreakerConfig, OpenAIDeployment
from relaygate.gateway import Gateway
from relaygate.providers.openai.provider import OpenAIProvider
from relaygate.routing.breaker import CLOSED, HALF_OPEN, Breaker
from relaygate.routing.deployment import Deployment
from relaygate.routing.strategies import Adaptive
from relaygate.testing.base import BackgroundServer

from .routing_support import dep, drive, emulators, fault, reset, with_gateway

N = 1000


@pytest.fixture(scope="module")
def three() -> Iterator[list[BackgroundServer]]:
    with emulators({}, {}, {}) as servers:
        yield servers


@pytest.fixture(autouse=True)
def clean(three: list[BackgroundServer]) -> None:
    reset(three)


def model(strategy: str, deployments: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"models": [{"name": "m", "strategy": strategy, "deployments": deployments, **extra}]}


def within(count: int, n: int, p: float, sigmas: float = 4.5) -> bool:
    """Is ``count`` of ``n`` trials consistent with probability ``p`` (binomial, ±sigmas)?"""
    sd = math.sqrt(n * p * (1 - p))
    return abs(count - n * p) <= sigmas * sd + 1


def test_round_robin_gives_each_deployment_an_equal_turn(three: list[BackgroundServer]) -> None:
    cfg = model("round_robin", [dep(e, f"rr{i}") for i, e in enumerate(three)])
    out = with_gateway(cfg, lambda gw: drive(gw, "m", 999, concurrency=4))
    assert out.served == {"rr0": 333, "rr1": 333, "rr2": 333}


def test_weighted_follows_the_weights(three: list[BackgroundServer]) -> None:
    weights = [1, 2, 7]
    cfg = model("weighted", [dep(e, f"w{i}", weight=w) for i, (e, w) in enumerate(zip(three, weights, strict=True))])
    out = with_gateway(cfg, lambda gw: drive(gw, "m", N, concurrency=8))
    assert sum(out.served.values()) == N
    for i, w in enumerate(weights):
        assert within(out.served[f"w{i}"], N, w / 10), out.served


def test_weighted_never_sends_to_a_zero_weight_deployment(three: list[BackgroundServer]) -> None:
    cfg = model("weighted", [dep(three[0], "w0", weight=0), dep(three[1], "w1", weight=1)])
    out = with_gateway(cfg, lambda gw: drive(gw, "m", 300, concurrency=4))
    assert out.served == {"w1": 300}


def test_least_connections_sends_less_to_the_deployment_holding_calls_longer(three: list[BackgroundServer]) -> None:
    # c holds each call ~50x longer, so it accumulates in-flight calls (far apart, so that a loaded machine's
    # few milliseconds of overhead per call cannot even them out: at 40 ms c got 16.5 % instead of ~5 %)
    fault(three[2], latency_ms=200)
    fault(three[0], latency_ms=4)
    fault(three[1], latency_ms=4)
    cfg = model("least_connections", [dep(e, f"lc{i}") for i, e in enumerate(three)])
    out = with_gateway(cfg, lambda gw: drive(gw, "m", N, concurrency=9))
    assert sum(out.served.values()) == N
    # balancing in-flight counts makes throughput ∝ 1/latency: c gets ~1/101 of the calls, a and b ~50/101
    assert out.served["lc2"] < 0.15 * N, out.served
    assert out.served["lc0"] > 0.35 * N and out.served["lc1"] > 0.35 * N, out.served


def test_least_connections_spreads_evenly_when_deployments_are_alike(three: list[BackgroundServer]) -> None:
    for e in three:
        fault(e, latency_ms=3)
    cfg = model("least_connections", [dep(e, f"lc{i}") for i, e in enumerate(three)])
    out = with_gateway(cfg, lambda gw: drive(gw, "m", N, concurrency=6))
    for i in range(3):
        assert 0.25 * N < out.served[f"lc{i}"] < 0.42 * N, out.served


def test_least_latency_prefers_the_fastest_and_still_explores(three: list[BackgroundServer]) -> None:
    fault(three[0], latency_ms=400)  # far apart, so that a loaded test machine's pauses cannot reorder them
    fault(three[1], latency_ms=1)
    fault(three[2], latency_ms=200)
    cfg = model("least_latency", [dep(e, f"ll{i}") for i, e in enumerate(three)])
    out = with_gateway(cfg, lambda gw: drive(gw, "m", N, concurrency=16))
    assert sum(out.served.values()) == N
    # 95% to the fastest by definition, 5% explored among the others (~2.5% each, plus the first tries)
    assert out.served["ll1"] > 0.88 * N, out.served
    assert out.served["ll0"] >= 3 and out.served["ll2"] >= 3, out.served


def test_least_latency_of_streams_is_time_to_first_token(three: list[BackgroundServer]) -> None:
    # s0 answers its first token late but streams fast; s1 answers at once but streams slowly:
    # whole-stream time favours s0, time to first token favours s1
    fault(three[0], latency_ms=100)
    fault(three[1], chunk_delay_ms=20)
    cfg = model("least_latency", [dep(three[0], "s0"), dep(three[1], "s1")])

    async def run(gw: Gateway) -> Any:
        out = await drive(gw, "m", 120, concurrency=12, stream=True)
        return out, {d.name: d.stats.latency_ewma for d in gw.deployments()}

    out, latency = with_gateway(cfg, run)
    assert latency["s1"] < 0.05 < latency["s0"], latency  # TTFT, not the whole stream (~20 ms x 8 chunks)
    assert out.served["s1"] > 0.8 * 120, out.served  # the first burst of 12 is split before any measure


def test_cost_sends_everything_to_the_cheapest_priced_deployment(three: list[BackgroundServer]) -> None:
    cfg = model("cost", [
        dep(three[0], "dear", input_cost_per_token=3e-6, output_cost_per_token=12e-6),
        dep(three[1], "cheap", input_cost_per_token=0.1e-6, output_cost_per_token=0.4e-6),
        dep(three[2], "catalog"),  # gpt-4o-mini at the catalog's 0.15 + 0.6 per million
    ])
    out = with_gateway(cfg, lambda gw: drive(gw, "m", N, concurrency=8))
    assert out.served == {"cheap": N}


def test_cost_reads_catalog_prices_when_the_config_has_none(three: list[BackgroundServer]) -> None:
    cfg = model("cost", [dep(three[0], "big", model="gpt-4o"), dep(three[1], "small", model="gpt-4o-mini"),
                         dep(three[2], "mid", model="gpt-4.1")])
    out = with_gateway(cfg, lambda gw: drive(gw, "m", 200, concurrency=4))
    assert out.served == {"small": 200}


def test_cost_reads_the_configs_prices_over_the_catalogs(three: list[BackgroundServer]) -> None:
    """Top-level ``prices`` override the bundled catalog for the cost strategy too (here gpt-4o, dear in the
    catalog, is made the cheapest)."""
    cfg = model("cost", [dep(three[0], "big", model="gpt-4o"), dep(three[1], "small", model="gpt-4o-mini")])
    cfg["prices"] = {"gpt-4o": {"input_cost_per_token": 1e-9, "output_cost_per_token": 1e-9}}
    out = with_gateway(cfg, lambda gw: drive(gw, "m", 100, concurrency=4))
    assert out.served == {"big": 100}


def test_cost_moves_to_the_next_cheapest_when_the_cheapest_fails(three: list[BackgroundServer]) -> None:
    fault(three[1], status=503)
    cfg = model("cost", [
        dep(three[0], "dear", input_cost_per_token=3e-6),
        dep(three[1], "cheap", input_cost_per_token=1e-7),
        dep(three[2], "mid", input_cost_per_token=1e-6),
    ], breaker={"failures": 3, "cooldown": 60})
    out = with_gateway(cfg, lambda gw: drive(gw, "m", 200, concurrency=1))
    assert out.served == {"mid": 200} and not out.errors
    assert sum(1 for r in three[1].state.requests if r["path"].endswith("/chat/completions")) == 3  # then open


def test_adaptive_favours_the_reliable_fast_deployment_and_keeps_probing_the_rest(
        three: list[BackgroundServer]) -> None:
    fault(three[0], status=500, rate=0.3)  # flaky
    fault(three[1], latency_ms=80)  # slow
    fault(three[2], latency_ms=1)  # good
    cfg = model("adaptive", [dep(e, f"ad{i}") for i, e in enumerate(three)],
                breaker={"enabled": False})
    out = with_gateway(cfg, lambda gw: drive(gw, "m", N, concurrency=4))
    assert sum(out.served.values()) == N and not out.errors  # a flaky answer fails over to another
    assert out.served["ad2"] > 0.85 * N, out.served
    # the exploration share (5%, split between the two others) keeps both of them measured
    assert out.served["ad0"] + out.served["ad1"] >= 20, out.served
    assert out.served["ad1"] >= 5


def measured(name: str, latency: float, baseline: float, breaker: Breaker | None = None) -> Deployment:
    cfg = OpenAIDeployment(model="x", api_base="http://127.0.0.1:9/v1")
    d = Deployment(name, "m", cfg, OpenAIProvider(cfg, None), breaker=breaker)
    d.stats.latency_ewma, d.stats.latency_baseline = latency, baseline
    return d


def test_adaptive_weighs_the_health_score_not_only_the_latency() -> None:
    """A deployment three times slower than its own baseline, or with a half-open breaker, has a lower health
    score: adaptive then prefers a steady one even when that one is slower in absolute terms."""
    steady = measured("steady", 0.15, 0.15)
    drifting = measured("drifting", 0.14, 0.05)  # faster than steady, but 2.8x its baseline: score 54
    half_open = Breaker("recovering", BreakerConfig())
    half_open.state = HALF_OPEN
    recovering = measured("recovering", 0.10, 0.10, half_open)  # the fastest, breaker half-open: score 50
    strategy = Adaptive(random.Random(7))
    picks = [strategy.choose([drifting, recovering, steady]).name for _ in range(400)]
    assert picks.count("steady") > 0.9 * 400, picks.count("steady")
    # the same three, all healthy and at their baselines: the fastest wins, as by latency alone
    for d in (drifting, recovering):
        d.stats.latency_baseline = d.stats.latency_ewma
    half_open.state = CLOSED
    assert [strategy.choose([drifting, recovering, steady]).name for _ in range(100)].count("recovering") > 90


def test_priority_uses_the_lowest_number_while_it_can_serve(three: list[BackgroundServer]) -> None:
    cfg = model("priority", [dep(three[0], "p1", priority=1), dep(three[1], "p0", priority=0),
                             dep(three[2], "p2", priority=2)])
    out = with_gateway(cfg, lambda gw: drive(gw, "m", N, concurrency=8))
    assert out.served == {"p0": N}


def test_priority_moves_down_only_when_the_previous_cannot_serve(three: list[BackgroundServer]) -> None:
    cfg = model("priority", [dep(None, "p0", priority=0), dep(three[1], "p1", priority=1),
                             dep(three[2], "p2", priority=2)], breaker={"failures": 2, "cooldown": 60})
    out = with_gateway(cfg, lambda gw: drive(gw, "m", 300, concurrency=1))
    assert out.served == {"p1": 300} and not out.errors
    assert out.attempts[2] == 2 and out.attempts[1] == 298  # p0 refused twice, then its breaker opened
