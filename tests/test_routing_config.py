"""Routing config: strategies, fallbacks, retries, breakers and health checks validated, errors by path."""

from __future__ import annotations

from typing import Any

import pytest

from relaygate.config import ConfigError, parse_config


def errors(models: list[dict[str, Any]]) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config({"models": models}, {})
    return e.value.errors


def d(name: str | None = None, **extra: Any) -> dict[str, Any]:
    out = {"provider": "openai", "model": "gpt-4o-mini", "api_base": "http://127.0.0.1:9/v1", **extra}
    if name:
        out["name"] = name
    return out


def test_full_routing_config_loads() -> None:
    cfg = parse_config({"models": [
        {"name": "a", "strategy": "least_latency",
         "retry": {"attempts": 3, "backoff": 0.1, "on": ["unavailable", "timeout"]},
         "breaker": {"failures": 4, "cooldown": 10, "probes": 2},
         "health_check": {"interval": 15},
         "fallbacks": [{"on": ["context_too_long"], "models": ["b"]}, {"models": ["b"]}],
         "deployments": [d("a0", weight=2, priority=1, rpm=100, tpm=10000, max_parallel=8, tags=["eu"],
                           input_cost_per_token=1e-6, health_check={"interval": 5, "enabled": False})]},
        {"name": "b", "deployments": [d()]},
    ]}, {})
    a = cfg.models[0]
    assert a.strategy == "least_latency" and a.retry.attempts == 3 and a.breaker.probes == 2
    assert a.fallbacks[1].on == ["unavailable", "rate_limited", "timeout"]  # the transient classes by default
    assert a.deployments[0].health_check is not None and not a.deployments[0].health_check.enabled


def test_unknown_strategy_is_named_with_its_path() -> None:
    (err,) = errors([{"name": "a", "strategy": "fastest", "deployments": [d()]}])
    assert err.startswith("models[0].strategy: ") and "least_latency" in err


def test_fallback_to_an_unknown_model_or_itself_is_an_error() -> None:
    assert errors([{"name": "a", "fallbacks": [{"models": ["b", "a"]}], "deployments": [d()]}]) == [
        "models[0].fallbacks[0].models[0]: unknown model 'b'",
        "models[0].fallbacks[0].models[1]: a model cannot fall back to itself",
    ]


def test_unknown_error_classes_are_rejected_where_they_appear() -> None:
    errs = errors([{"name": "a", "fallbacks": [{"on": ["oops"], "models": ["a"]}],
                    "retry": {"on": ["context_too_long"]}, "breaker": {"on": ["auth"]}, "deployments": [d()]}])
    assert [e.split(":")[0] for e in errs] == ["models[0].fallbacks[0].on", "models[0].retry.on",
                                              "models[0].breaker.on"]
    assert "unknown error class 'context_too_long'" in errs[1]  # retrying it would fail the same way


def test_out_of_range_settings_name_their_field() -> None:
    errs = errors([{"name": "a", "retry": {"attempts": 0}, "breaker": {"failure_rate": 1.5, "cooldown": 0},
                    "health_check": {"interval": -1}, "deployments": [d(weight=-1)]}])
    paths = sorted(e.split(":")[0] for e in errs)
    assert paths == ["models[0].breaker.cooldown", "models[0].breaker.failure_rate",
                     "models[0].deployments[0].weight", "models[0].health_check.interval",
                     "models[0].retry.attempts"]


def test_deployment_names_must_be_unique_across_models() -> None:
    assert errors([{"name": "a", "deployments": [d("x")]}, {"name": "b", "deployments": [d("x")]}]) == [
        "models[1].deployments[0].name: duplicate deployment name 'x'"]
