"""Fault injection: each fault kind as a client sees it, recovered by a retry or a fallback where the config
has one; rules switched at run time through /admin/chaos; counted in the metrics and named in the log row;
off unless the config turns it on."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from relaygate.testing.gateway import GatewayThread

from .routing_support import MESSAGES, dep, emulators, fault

MASTER = "rg-master-chaos-0123456789abcdef"
ADMIN = {"authorization": f"Bearer {MASTER}"}
Start = Callable[..., GatewayThread]


def config(emu: Any, **chaos: Any) -> dict[str, Any]:
    return {
        "models": [
            {"name": "m", "strategy": "priority", "retry": {"attempts": 2, "backoff": 0.01},
             "deployments": [dep(emu, "m-first"), dep(emu, "m-second", priority=1)]},
            {"name": "solo", "retry": {"attempts": 1}, "deployments": [dep(emu, "solo-a", timeout=0.3)]},
            {"name": "fb", "retry": {"attempts": 1}, "deployments": [dep(emu, "fb-a")],
             "fallbacks": [{"models": ["solo"], "on": ["unavailable"]}]},
        ],
        "auth": {"master_key": MASTER},
        "chaos": {"enabled": True, "seed": 7, **chaos},
    }


def chat(gw: GatewayThread, model: str, stream: bool = False) -> requests.Response:
    return requests.post(gw.base_url + "/chat/completions", headers=ADMIN, timeout=10, stream=stream,
                         json={"model": model, "messages": MESSAGES, "stream": stream})


def add(gw: GatewayThread, **rule: Any) -> requests.Response:
    return requests.post(gw.url + "/admin/chaos", headers=ADMIN, json=rule, timeout=5)


def injected(gw: GatewayThread, deployment: str, fault: str) -> float:
    text = requests.get(gw.url + "/metrics", headers=ADMIN, timeout=5).text
    line = f'relaygate_faults_injected_total{{deployment="{deployment}",fault="{fault}"}} '
    found = [ln for ln in text.splitlines() if ln.startswith(line)]
    return float(found[0].split()[-1]) if found else 0.0


def test_each_fault_kind_as_the_client_sees_it(start_gateway: Start) -> None:
    with emulators({}) as (emu,):
        gw = start_gateway(config(emu))
        cases: list[tuple[dict[str, Any], int, str | None]] = [
                 ({"fault": "error", "status": 503}, 503, "upstream_unavailable"),
                 ({"fault": "rate_limit", "retry_after": 7}, 429, "rate_limit_exceeded"),
                 ({"fault": "timeout"}, 504, None),
                 ({"fault": "drop"}, 502, "upstream_unavailable")]
        for i, (rule, status, code) in enumerate(cases):
            assert add(gw, name=f"k{i}", model="solo", **rule).status_code == 201
            r = chat(gw, "solo")
            assert r.status_code == status, (rule, r.text)
            assert r.headers["x-relaygate-fault"] == f"k{i}"
            assert "chaos rule" in r.json()["error"]["message"]
            if code:
                assert r.json()["error"]["code"] == code
            if rule["fault"] == "rate_limit":
                assert r.headers["retry-after"] == "7"
            assert requests.delete(f"{gw.url}/admin/chaos/k{i}", headers=ADMIN, timeout=5).status_code == 200
        assert add(gw, name="slow", model="solo", fault="latency", latency=0.25).status_code == 201
        started = time.monotonic()
        r = chat(gw, "solo")
        assert r.status_code == 200 and time.monotonic() - started >= 0.25
        assert r.headers["x-relaygate-fault"] == "slow"
        switched = requests.patch(gw.url + "/admin/chaos/slow", headers=ADMIN, json={"enabled": False}, timeout=5)
        assert switched.json()["enabled"] is False and switched.json()["injected"] == 1
        assert "x-relaygate-fault" not in chat(gw, "solo").headers  # off: the call goes through untouched
        assert add(gw, name="cut", model="solo", fault="stream_cut", after_chunks=2).status_code == 201
        fault(emu, chunk_delay_ms=30)  # one upstream read per event, so that two chunks are two events
        with chat(gw, "solo", stream=True) as r:
            assert r.status_code == 200 and r.headers["x-relaygate-fault"] == "cut"
            events = [ln for ln in r.iter_lines() if ln.startswith(b"data:")]
        assert len(events) == 3 and b'"error"' in events[-1] and b"chaos rule" in events[-1]
        for kind in ("error", "rate_limit", "timeout", "drop", "latency", "stream_cut"):
            assert injected(gw, "solo-a", kind) == 1, kind
        listed = requests.get(gw.url + "/admin/chaos", headers=ADMIN, timeout=5).json()
        assert [(r["name"], r["injected"]) for r in listed["rules"]] == [("slow", 1), ("cut", 1)]
        deadline = time.monotonic() + 10
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not rows:
            rows = requests.get(gw.url + "/admin/logs?status=503", headers=ADMIN, timeout=5).json()["data"]
            time.sleep(0.1)
    # the log row of a failed call names the rule that failed it
    assert rows and "fault injected by chaos rule 'k0'" in rows[0]["error_message"]


def test_a_fault_is_recovered_by_a_retry_and_by_a_fallback(start_gateway: Start) -> None:
    rules = [{"name": "first-down", "deployment": "m-first", "fault": "error", "status": 500},
             {"name": "fb-drops", "model": "fb", "fault": "drop"}]
    with emulators({}) as (emu,):
        gw = start_gateway(config(emu, rules=rules))
        r = chat(gw, "m")  # m-first fails, the retry goes to m-second
        assert r.status_code == 200 and r.headers["x-relaygate-deployment"] == "m-second"
        assert r.headers["x-relaygate-attempts"] == "2"
        r = chat(gw, "fb")  # fb's only deployment drops the connection: the fallback model answers
        assert r.status_code == 200 and r.headers["x-relaygate-deployment"] == "solo-a"
        assert injected(gw, "m-first", "error") == 1 and injected(gw, "fb-a", "drop") == 1
        deadline = time.monotonic() + 10
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline and len(rows) < 2:
            rows = requests.get(gw.url + "/admin/logs", headers=ADMIN, timeout=5).json()["data"]
            time.sleep(0.1)
    # the log rows are of the served calls; what the drill did shows in their attempts and the metrics
    assert sorted(row["attempts"] for row in rows) == [2, 2]


def test_a_probability_hits_some_calls_only(start_gateway: Start) -> None:
    rules = [{"name": "third", "model": "solo", "fault": "error", "status": 503, "probability": 0.3}]
    with emulators({}) as (emu,):
        gw = start_gateway(config(emu, rules=rules))
        statuses = [chat(gw, "solo").status_code for _ in range(40)]
    assert 0 < statuses.count(503) < 40 and statuses.count(503) + statuses.count(200) == 40


def test_admin_chaos_checks_its_input_and_the_master_key(start_gateway: Start) -> None:
    with emulators({}) as (emu,):
        gw = start_gateway(config(emu))
        assert add(gw, name="everything", fault="error").status_code == 400  # no scope
        r = add(gw, name="x", model="nope", fault="error")
        assert r.status_code == 400 and "no model named" in r.json()["error"]["message"]
        r = add(gw, name="x", model="solo", fault="explode")
        assert r.status_code == 400 and r.json()["error"]["param"] == "fault"
        assert add(gw, name="x", model="solo", fault="error").status_code == 201
        assert add(gw, name="x", model="solo", fault="error").status_code == 400  # the name is taken
        r = requests.patch(gw.url + "/admin/chaos/x", headers=ADMIN, json={"enabled": "yes"}, timeout=5)
        assert r.status_code == 400
        assert requests.get(gw.url + "/admin/chaos/missing", headers=ADMIN, timeout=5).status_code == 404
        r = requests.post(gw.url + "/admin/chaos", json={"name": "y", "model": "solo", "fault": "error"}, timeout=5)
        assert r.status_code == 401


def test_chaos_is_off_by_default(start_gateway: Start) -> None:
    with emulators({}) as (emu,):
        cfg = config(emu)
        del cfg["chaos"]
        gw = start_gateway(cfg)
        r = requests.get(gw.url + "/admin/chaos", headers=ADMIN, timeout=5)
        assert r.status_code == 403 and r.json()["error"]["code"] == "chaos_disabled"
        # nothing is wrapped: the router calls the providers' own handlers
        for d in gw.gateway.deployments():
            assert d.provider.handlers == d.provider.own_handlers


def test_a_config_rule_naming_an_unknown_deployment_is_refused() -> None:
    import asyncio

    from relaygate.config import ConfigError, parse_config
    from relaygate.gateway import Gateway

    with emulators({}) as (emu,):
        cfg = parse_config(config(emu, rules=[{"name": "r", "deployment": "nope", "fault": "drop"}]), {})
        with pytest.raises(ConfigError) as e:
            asyncio.run(Gateway.create(cfg))
    assert e.value.errors == ["chaos.rules[0]: deployment: no deployment named 'nope'"]


def test_a_reload_takes_over_the_deployments_without_stacking_or_keeping_the_old_rules() -> None:
    """Deployments a reload keeps are wrapped again from their provider's own handlers: the new gateway's
    rules apply once, the old one's no more, and a gateway without chaos gets them unwrapped."""
    import asyncio

    from relaygate.config import parse_config
    from relaygate.core.call import Call, Route
    from relaygate.core.errors import GatewayError
    from relaygate.gateway import Gateway

    with emulators({}) as (emu,):
        rule = {"name": "r", "model": "m", "fault": "error", "status": 503}
        chaotic = parse_config(config(emu, rules=[rule]), {})
        calm = parse_config({**config(emu), "chaos": {"enabled": False}}, {})

        async def scenario() -> None:
            first = await Gateway.create(chaotic)
            second = await Gateway.create(calm, previous=first, keep=[first])
            dep = second.table.models["m"][0]
            reply = await dep.provider.handlers[Route.CHAT](Call(id="b", route=Route.CHAT, model="m", deployment=dep,
                                                                 body={"model": "m", "messages": MESSAGES}))
            assert reply.status == 200 and first.chaos is not None and first.chaos.rules["r"].injected == 0
            third = await Gateway.create(chaotic, previous=second, keep=[second])
            try:
                dep = third.table.models["m"][0]
                assert dep is first.table.models["m"][0]  # kept through both reloads
                assert second.chaos is None and first.chaos is not None and third.chaos is not None
                with pytest.raises(GatewayError) as e:
                    await dep.provider.handlers[Route.CHAT](Call(id="c", route=Route.CHAT, model="m", deployment=dep,
                                                                 body={"model": "m", "messages": MESSAGES}))
                assert e.value.status == 503
                assert third.chaos.rules["r"].injected == 1 and first.chaos.rules["r"].injected == 0
            finally:
                for gw in (first, second):
                    await gw.close(keep=[third])
                await third.close()

        asyncio.run(scenario())
