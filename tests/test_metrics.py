"""GET /metrics: values after a known sequence of calls, parsed by prometheus_client's own parser; who may
scrape; bounded labels; health scores falling and recovering with an upstream's failures."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import openai
import orjson
import pytest
import urllib3
from prometheus_client.parser import text_string_to_metric_families

from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import GatewayThread

from .conftest import inside_one_minute
from .routing_support import MESSAGES, dep, emulators, fault, reset

MASTER = "rg-master-metrics-0123456789abcdef"
LIMITED = "sk-metrics-limited-0123456789abcdef"
Start = Callable[..., GatewayThread]


def scrape(gw: GatewayThread, key: str | None = MASTER, accept: str | None = None) -> urllib3.BaseHTTPResponse:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    if accept:
        headers["accept"] = accept
    return urllib3.request("GET", gw.url + "/metrics", headers=headers, timeout=5)


def samples(gw: GatewayThread) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the exposition, as (name, labels) -> value, read by prometheus_client's parser."""
    r = scrape(gw)
    assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.data.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and want <= ls)


def client(gw: GatewayThread, key: str = MASTER) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)


def config(primary: BackgroundServer, broken: BackgroundServer, **extra: Any) -> dict[str, Any]:
    return {
        "models": [
            {"name": "m", "retry": {"attempts": 2, "backoff": 0.01}, "deployments": [dep(primary, "m-a")]},
            {"name": "fb", "retry": {"attempts": 1}, "deployments": [dep(broken, "fb-a")],
             "fallbacks": [{"models": ["m"], "on": ["unavailable"]}]},
            {"name": "*", "deployments": [{**dep(primary, "wild-a"), "model": "*"}]},
        ],
        "auth": {"master_key": MASTER, "keys": [{"id": "limited", "key": LIMITED, "team_id": "t1", "rpm": 1}]},
        **extra,
    }


def test_metric_values_after_a_known_sequence_of_calls(start_gateway: Start) -> None:
    with emulators({}, {}) as (primary, broken):
        gw = start_gateway(config(primary, broken, metrics={"key_labels": True}))
        c = client(gw)
        c.chat.completions.create(model="m", messages=MESSAGES)  # 1: plain success
        fault(primary, status=500, count=1)
        c.chat.completions.create(model="m", messages=MESSAGES)  # 2: a 500, retried, then served
        fault(broken, status=503)
        c.chat.completions.create(model="fb", messages=MESSAGES)  # 3: fb fails, falls back to m
        reset([primary])
        list(c.chat.completions.create(model="m", messages=MESSAGES, stream=True))  # 4: a stream (TTFT)
        limited = client(gw, LIMITED)
        inside_one_minute()
        limited.chat.completions.create(model="m", messages=MESSAGES)  # 5: the key's one call this minute
        with pytest.raises(openai.RateLimitError):
            limited.chat.completions.create(model="m", messages=MESSAGES)  # 6: refused by its rpm
        with pytest.raises(openai.AuthenticationError):
            client(gw, "sk-not-a-key-0123456789abcdef").chat.completions.create(model="m", messages=MESSAGES)
        c.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # 8: a model only the wildcard serves
        found = samples(gw)
        text = scrape(gw).data.decode()

    ok_m = value(found, "relaygate_requests_total", model="m", deployment="m-a", status="200", route="chat")
    assert ok_m == 5  # calls 1, 2, 3 (by fallback), 4, 5
    assert value(found, "relaygate_requests_total", model="m", status="429", error="rate_limited") == 1
    assert value(found, "relaygate_requests_total", status="401", error="auth") == 1
    assert value(found, "relaygate_requests_total") == 8
    assert value(found, "relaygate_retries_total", deployment="m-a") == 2  # call 2's retry, call 3's fallback
    assert value(found, "relaygate_fallbacks_total", model="fb", fallback="m") == 1
    assert value(found, "relaygate_limit_refusals_total", model="m", reason="rate") == 1
    assert value(found, "relaygate_request_duration_seconds_count", deployment="m-a") == 5
    assert value(found, "relaygate_request_duration_seconds_bucket", deployment="m-a", le="+Inf") == 5
    assert value(found, "relaygate_time_to_first_token_seconds_count", deployment="m-a") == 1
    assert value(found, "relaygate_input_tokens_total", deployment="m-a") > 0
    assert value(found, "relaygate_output_tokens_total", deployment="m-a") > 0
    assert value(found, "relaygate_cost_usd_total", deployment="m-a") > 0
    assert value(found, "relaygate_key_requests_total", key="cfg_limited", team="t1") == 2
    assert value(found, "relaygate_in_flight") == 0
    # fb-a has a breaker (its model can fall back), still closed after one failure; m-a has none
    assert value(found, "relaygate_deployment_breaker_state", deployment="fb-a", state="closed") == 1
    assert value(found, "relaygate_deployment_breaker_state", deployment="fb-a", state="open") == 0
    assert value(found, "relaygate_deployment_breaker_state", deployment="m-a") == 0
    assert 0 < value(found, "relaygate_deployment_health_score", deployment="m-a") <= 100
    assert value(found, "relaygate_request_log_database_up") == 1
    assert value(found, "relaygate_request_log_written_rows_total") >= 0
    assert value(found, "process_cpu_seconds_total") > 0
    # the wildcard call is counted under its configured model ("*"), not the name the client sent
    assert value(found, "relaygate_requests_total", model="*", deployment="wild-a", status="200") == 1
    assert "user-chosen-name" not in text and LIMITED not in text and MASTER not in text


def test_cache_hits_misses_and_the_usd_they_saved(start_gateway: Start) -> None:
    with emulators({}) as (emu,):
        gw = start_gateway({"models": [{"name": "c", "deployments": [dep(emu, "c-a")], "cache": {}}],
                            "auth": {"master_key": MASTER}})
        c = client(gw)
        create = c.chat.completions.with_raw_response.create
        first = create(model="c", messages=MESSAGES, temperature=0)  # a miss, answered upstream and kept
        again = [create(model="c", messages=MESSAGES, temperature=0) for _ in range(2)]  # two hits
        c.chat.completions.create(model="c", messages=MESSAGES, temperature=0, seed=3)  # another miss
        found = samples(gw)
    assert first.headers["x-relaygate-cache"] == "miss" and {r.headers["x-relaygate-cache"] for r in again} == {"hit"}
    # a hit is served by no deployment: counted under its model with an empty deployment
    assert value(found, "relaygate_cache_hits_total", model="c", deployment="") == 2
    assert value(found, "relaygate_cache_hits_total") == 2
    assert value(found, "relaygate_cache_misses_total") == 2
    # each hit saved what its entry cost when it was answered upstream (both misses cost the same here)
    cost = value(found, "relaygate_cost_usd_total", deployment="c-a")
    assert value(found, "relaygate_cache_saved_usd_total", model="c") == pytest.approx(cost, rel=0.2)


def test_metrics_need_the_master_key_unless_public(start_gateway: Start) -> None:
    with emulators({}, {}) as (primary, broken):
        gw = start_gateway(config(primary, broken))
        assert scrape(gw, key=None).status == 401
        assert scrape(gw, key=LIMITED).status == 401  # a virtual key is not enough
        assert scrape(gw).status == 200
        open_gw = start_gateway(config(primary, broken, metrics={"public": True}))
        assert scrape(open_gw, key=None).status == 200
        off = start_gateway(config(primary, broken, metrics={"enabled": False}))
        r = scrape(off)
        assert r.status == 404 and r.json()["error"]["code"] == "metrics_disabled"


def test_openmetrics_when_the_scraper_asks_for_it(start_gateway: Start) -> None:
    with emulators({}, {}) as (primary, broken):
        gw = start_gateway(config(primary, broken))
        client(gw).chat.completions.create(model="m", messages=MESSAGES)
        r = scrape(gw, accept="application/openmetrics-text; version=1.0.0")
    assert r.status == 200 and r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.data.decode().rstrip().endswith("# EOF")


def health(gw: GatewayThread) -> dict[str, Any]:
    r = urllib3.request("GET", gw.url + "/health", timeout=5)
    assert r.status == 200  # liveness, whatever the upstreams do
    return dict(r.json())


def test_health_score_falls_and_recovers_with_upstream_failures(start_gateway: Start) -> None:
    cooldown = 0.3
    with emulators({}) as (emu,):
        gw = start_gateway({"models": [{"name": "m", "retry": {"attempts": 1},
                                        "breaker": {"enabled": True, "failures": 3, "cooldown": cooldown},
                                        "deployments": [dep(emu, "only")]}]})
        c = client(gw, "anything")
        for _ in range(3):
            c.chat.completions.create(model="m", messages=MESSAGES)
        assert (health(gw)["status"], health(gw)["score"]) == ("healthy", 100)
        fault(emu, status=500)
        for _ in range(3):
            with pytest.raises(openai.InternalServerError):
                c.chat.completions.create(model="m", messages=MESSAGES)
        # its breaker is open: nothing serves m
        assert (health(gw)["status"], health(gw)["score"]) == ("unhealthy", 0)
        report = urllib3.request("GET", gw.url + "/health/providers", timeout=5).json()["deployments"][0]
        assert report["score"] == 0 and report["score_parts"]["breaker"] == 0
        assert report["score_parts"]["success"] < 1
        reset([emu])
        time.sleep(cooldown + 0.05)
        success = []
        for _ in range(10):
            c.chat.completions.create(model="m", messages=MESSAGES)
            report = urllib3.request("GET", gw.url + "/health/providers", timeout=5).json()["deployments"][0]
            success.append(report["score_parts"]["success"])
        final = health(gw)
    # the breaker closed on the first success; the success rate climbs back with each call
    assert report["score_parts"]["breaker"] == 1 and report["score"] > 0
    assert success == sorted(success) and success[0] < success[-1] < 1
    assert 0 < final["score"] < 100
    assert final["status"] == ("healthy" if final["score"] >= 50 else "degraded")


def test_access_log_is_one_json_line_per_request_without_secrets(start_gateway: Start,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    with emulators({}, {}) as (primary, broken):
        gw = start_gateway(config(primary, broken, access_log={"enabled": True}))
        with caplog.at_level(logging.INFO, logger="relaygate.access"):
            client(gw).chat.completions.create(model="m", messages=MESSAGES)
            with pytest.raises(openai.NotFoundError):
                client(gw).chat.completions.create(model=f"nope {LIMITED} a@b.example", messages=MESSAGES)
            deadline = time.monotonic() + 5
            while len(caplog.records) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "relaygate.access"]
    assert [line["status"] for line in lines] == [200, 404]
    ok, missing = lines
    assert ok["model"] == "m" and ok["deployment"] == "m-a" and ok["provider"] == "openai"
    assert ok["prompt_tokens"] > 0 and ok["latency_ms"] > 0 and ok["key_id"] is not None
    assert missing["error"] == "not_found"
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert LIMITED not in text and "a@b.example" not in text and MASTER not in text


def test_the_grafana_dashboard_queries_only_metrics_the_gateway_exports(start_gateway: Start) -> None:
    import json
    import re
    from pathlib import Path

    dashboard = json.loads((Path(__file__).parent.parent / "deploy" / "grafana" / "relaygate.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {re.sub(r"_(total|bucket|count|sum)$", "", m) for e in exprs for m in re.findall(r"relaygate_[a-z_]+", e)}
    with emulators({}, {}) as (primary, broken):
        gw = start_gateway(config(primary, broken))
        client(gw).chat.completions.create(model="m", messages=MESSAGES)
        exported = {f.name for f in text_string_to_metric_families(scrape(gw).data.decode())}
    assert len(used) >= 14 and used <= exported, used - exported


def test_the_cost_of_plain_calls_is_their_tokens_priced_at_the_scrape(start_gateway: Start) -> None:
    """A call's cost is not computed when it ends (nothing else needs it with the request log off): the series
    keeps its tokens and a scrape prices them; a call priced on its own (cached tokens, a meter) is kept apart."""
    with emulators({}) as (emu,):
        gw = start_gateway({"models": [{"name": "p", "deployments": [dep(emu, "p-a", input_cost_per_token=1e-6,
                                                                         output_cost_per_token=2e-6)]}],
                            "request_log": {"enabled": False}, "auth": {"master_key": MASTER}})
        usages = [client(gw).chat.completions.create(model="p", messages=MESSAGES, max_tokens=n).usage
                  for n in (5, 9, 5)]
        found = samples(gw)
    expected = sum(u.prompt_tokens * 1e-6 + u.completion_tokens * 2e-6 for u in usages if u is not None)
    assert expected > 0
    assert value(found, "relaygate_cost_usd_total", deployment="p-a") == pytest.approx(expected, rel=1e-9)
    assert value(found, "relaygate_requests_total", deployment="p-a") == 3


def test_a_series_prices_its_tokens_but_those_of_calls_priced_apart() -> None:
    from relaygate.catalog.prices import Price
    from relaygate.observability.metrics import Series

    s = Series(("p", "p-a", "openai", "chat", "200", ""), 3, Price(input=1e-6, output=2e-6))
    s.input_tokens, s.output_tokens = 100, 50
    s.apart_input, s.apart_output, s.cost_nano = 40, 10, 7  # a call with cached tokens, priced when it ended
    assert s.cost() == 7 + (60 * 1000 + 40 * 2000)
    unpriced = Series(("*", "w", "openai", "chat", "200", ""), 3)  # a wildcard's: every call priced on its own
    unpriced.input_tokens, unpriced.cost_nano = 100, 5
    assert unpriced.cost() == 5
