"""``GET /v1/providers``: configured providers in config order, their availability and default model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from relaygate.api.providers import providers_body
from relaygate.config import parse_config
from relaygate.gateway import Gateway
from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import GatewayThread
from tests.conftest import UPSTREAM_KEY, openai_model


def config(emulator: BackgroundServer) -> dict[str, Any]:
    return {"models": [
        {"name": "command", "deployments": [{"provider": "cohere", "model": "command-a-03-2025",
                                             "api_base": "http://127.0.0.1:9", "api_key": "k"}]},
        openai_model("gpt", emulator),
        {"name": "*", "deployments": [{"provider": "openai", "model": "*", "api_base": emulator.url + "/v1",
                                       "api_key": UPSTREAM_KEY}]},
        {"name": "demo", "deployments": [{"provider": "demo", "model": "demo"}]},
        {"name": "command-2", "deployments": [{"provider": "cohere", "model": "command-r-08-2024",
                                               "api_base": "http://127.0.0.1:9", "api_key": "k"}]},
    ]}


def test_providers_are_listed_in_config_order_with_their_first_model(
        start_gateway: Callable[..., GatewayThread], openai_emulator: BackgroundServer) -> None:
    gw = start_gateway(config(openai_emulator))
    r = httpx.get(gw.url + "/v1/providers")
    assert r.status_code == 200
    assert r.json() == {"providers": [
        {"name": "cohere", "available": True, "default_model": "command"},
        {"name": "openai", "available": True, "default_model": "gpt"},
        {"name": "demo", "available": True, "default_model": "demo"},
    ], "default": "cohere"}
    assert httpx.post(gw.url + "/v1/providers").status_code == 405


def test_wildcard_only_provider_has_no_default_model_and_empty_config_no_default(
        start_gateway: Callable[..., GatewayThread], openai_emulator: BackgroundServer) -> None:
    only_wildcard = {"models": [{"name": "*", "deployments": [
        {"provider": "openai", "model": "*", "api_base": openai_emulator.url + "/v1"}]}]}
    body = httpx.get(start_gateway(only_wildcard).url + "/v1/providers").json()
    assert body == {"providers": [{"name": "openai", "available": True, "default_model": None}],
                    "default": "openai"}
    assert httpx.get(start_gateway({"models": []}).url + "/v1/providers").json() == {"providers": [],
                                                                                     "default": None}


def test_provider_is_unavailable_once_its_deployments_cannot_take_traffic(
        openai_emulator: BackgroundServer) -> None:
    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        gw = await Gateway.create(parse_config(config(openai_emulator), {}))
        before = providers_body(gw)
        await gw.close()  # its upstream pool is gone: nothing can be sent anywhere
        return before, providers_body(gw)

    before, after = asyncio.run(go())
    assert all(p["available"] for p in before["providers"])
    assert not any(p["available"] for p in after["providers"])


def test_provider_whose_breaker_opened_is_unavailable(start_gateway: Callable[..., GatewayThread],
                                                      openai_emulator: BackgroundServer) -> None:
    from relaygate.testing.cohere import create_app as cohere_app

    with BackgroundServer(cohere_app()) as cohere:
        httpx.post(cohere.url + "/_emulator/faults", json={"status": 503})
        gw = start_gateway({"models": [
            {"name": "command", "breaker": {"enabled": True, "failures": 1, "cooldown": 60},
             "deployments": [{"provider": "cohere", "model": "command-a-03-2025", "api_base": cohere.url}]},
            openai_model("gpt", openai_emulator)]})
        before = httpx.get(gw.url + "/v1/providers").json()["providers"]
        assert [p["available"] for p in before] == [True, True]
        r = httpx.post(gw.base_url + "/chat/completions",
                       json={"model": "command", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 503
        body = httpx.get(gw.url + "/v1/providers").json()
        assert body["providers"] == [{"name": "cohere", "available": False, "default_model": "command"},
                                     {"name": "openai", "available": True, "default_model": "gpt"}]
        assert body["default"] == "cohere"  # the first configured, available or not
