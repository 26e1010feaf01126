"""Model discovery: each provider's listing endpoint in its emulator, checked with the provider's own SDK; the
gateway reading every one of them in the background; an unreachable upstream kept stale with its last list."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import boto3
import cohere
import httpx
import openai
import pytest
from botocore.config import Config as BotoConfig
from google import genai
from google.genai import types

from relaygate.testing.anthropic import AnthropicEmulatorOptions
from relaygate.testing.anthropic import create_app as anthropic_app
from relaygate.testing.base import BackgroundServer, FaultPlan, free_port
from relaygate.testing.bedrock import TEST_ACCESS_KEY, TEST_SECRET_KEY
from relaygate.testing.bedrock import create_app as bedrock_app
from relaygate.testing.bedrock_models import FOUNDATION_MODELS
from relaygate.testing.cohere import CHAT_MODELS, EMBED_MODELS, TRANSCRIBE_MODELS, CohereEmulatorOptions
from relaygate.testing.cohere import create_app as cohere_app
from relaygate.testing.gateway import GatewayThread
from relaygate.testing.gemini import GeminiEmulatorOptions
from relaygate.testing.gemini import create_app as gemini_app
from relaygate.testing.openai import OpenAIEmulatorOptions
from relaygate.testing.openai import create_app as openai_app

KEY = "sk-discovery-upstream-5e1f0a9c3b7d2e84"
GEMINI_KEY = "AIzaSyDiscoveryKey0123456789abcdefghij"
MASTER = "sk-master-" + "91d3c7b5" * 5
ANTHROPIC_MODELS = tuple(f"claude-emulated-{i}" for i in range(25))  # more than one page of 20
OLLAMA_MODELS = ("llama3.2:latest", "qwen2.5-coder:7b")
COHERE_MODELS = CHAT_MODELS + EMBED_MODELS + TRANSCRIBE_MODELS
ACTIVE_BEDROCK = sorted(m for m, (_, _, _, status) in FOUNDATION_MODELS.items() if status == "ACTIVE")


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, BackgroundServer]]:
    servers = {
        "openai": BackgroundServer(openai_app(OpenAIEmulatorOptions(api_key=KEY))),
        "ollama": BackgroundServer(openai_app(OpenAIEmulatorOptions(models=OLLAMA_MODELS, ollama=True))),
        "anthropic": BackgroundServer(anthropic_app(AnthropicEmulatorOptions(api_key=KEY, models=ANTHROPIC_MODELS))),
        "gemini": BackgroundServer(gemini_app(GeminiEmulatorOptions(api_key=GEMINI_KEY))),
        "cohere": BackgroundServer(cohere_app(CohereEmulatorOptions(api_key=KEY))),
        "bedrock": BackgroundServer(bedrock_app()),
    }
    for s in servers.values():
        s.start()
    yield servers
    for s in servers.values():
        s.stop()


# ---- the emulators' listings, read by each provider's SDK -------------------------------------------------

def test_openai_and_ollama_listings_parse_in_the_openai_sdk(upstreams: dict[str, BackgroundServer]) -> None:
    client = openai.OpenAI(api_key=KEY, base_url=upstreams["openai"].url + "/v1", max_retries=0)
    assert [m.id for m in client.models.list()] == list(OpenAIEmulatorOptions().models)
    tags = httpx.get(upstreams["ollama"].url + "/api/tags").json()
    assert [m["model"] for m in tags["models"]] == list(OLLAMA_MODELS) and tags["models"][0]["details"]["format"]


def test_anthropic_listing_pages_in_the_anthropic_sdk(upstreams: dict[str, BackgroundServer]) -> None:
    client = anthropic.Anthropic(api_key=KEY, base_url=upstreams["anthropic"].url, max_retries=0)
    first = client.models.list(limit=10)
    assert len(first.data) == 10 and first.has_more and first.data[0].type == "model"
    assert first.data[0].max_input_tokens == 200_000 and first.data[0].lifecycle == "active"
    every = [m.id for m in client.models.list(limit=7)]  # the SDK follows after_id across pages
    assert sorted(every) == sorted(ANTHROPIC_MODELS) and len(every) == len(ANTHROPIC_MODELS)
    back = client.models.list(before_id=every[10], limit=3)
    assert [m.id for m in back.data] == every[7:10]
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(api_key="wrong", base_url=upstreams["anthropic"].url, max_retries=0).models.list()


def test_gemini_listing_pages_in_google_genai(upstreams: dict[str, BackgroundServer]) -> None:
    client = genai.Client(api_key=GEMINI_KEY, http_options=types.HttpOptions(base_url=upstreams["gemini"].url))
    models = list(client.models.list(config={"page_size": 2}))
    assert [m.name for m in models] == [f"models/{m}" for m in GeminiEmulatorOptions().models]
    chat = next(m for m in models if m.name == "models/gemini-2.5-pro")
    assert chat.input_token_limit and chat.output_token_limit == 65536 and chat.thinking is True
    assert "generateContent" in (chat.supported_actions or [])


def test_cohere_listing_pages_in_the_cohere_sdk(upstreams: dict[str, BackgroundServer]) -> None:
    client = cohere.ClientV2(api_key=KEY, base_url=upstreams["cohere"].url, timeout=10)
    first = client.models.list(page_size=2)
    assert [m.name for m in first.models or []] == list(COHERE_MODELS[:2]) and first.next_page_token == "2"
    rest = client.models.list(page_size=100, page_token="2")
    assert [m.name for m in rest.models or []] == list(COHERE_MODELS[2:]) and rest.next_page_token is None


def test_bedrock_list_foundation_models_parses_in_boto3(upstreams: dict[str, BackgroundServer]) -> None:
    client = boto3.client("bedrock", endpoint_url=upstreams["bedrock"].url, region_name="us-east-1",
                          aws_access_key_id=TEST_ACCESS_KEY, aws_secret_access_key=TEST_SECRET_KEY,
                          config=BotoConfig(retries={"total_max_attempts": 1, "mode": "standard"}))
    summaries = client.list_foundation_models()["modelSummaries"]
    assert sorted(s["modelId"] for s in summaries) == sorted(FOUNDATION_MODELS)
    assert {s["providerName"] for s in client.list_foundation_models(byProvider="meta")["modelSummaries"]} == {"Meta"}
    bad = boto3.client("bedrock", endpoint_url=upstreams["bedrock"].url, region_name="us-east-1",
                       aws_access_key_id=TEST_ACCESS_KEY, aws_secret_access_key="wrong-secret",
                       config=BotoConfig(retries={"total_max_attempts": 1, "mode": "standard"}))
    with pytest.raises(bad.exceptions.ClientError):
        bad.list_foundation_models()


# ---- the gateway discovering from all of them --------------------------------------------------------------

def deployments(up: dict[str, BackgroundServer], dead_port: int) -> list[dict[str, Any]]:
    return [
        {"name": "gpt", "deployments": [{"name": "openai-up", "provider": "openai", "model": "gpt-4o-mini",
                                         "api_base": up["openai"].url + "/v1", "api_key": KEY}]},
        # a second model on the same upstream and key: one listing for both
        {"name": "gpt-big", "deployments": [{"name": "openai-up-2", "provider": "openai", "model": "gpt-4o",
                                             "api_base": up["openai"].url + "/v1", "api_key": KEY, "weight": 2}]},
        {"name": "local/*", "deployments": [{"name": "ollama", "provider": "openai", "model": "*",
                                             "models_api": "ollama", "api_base": up["ollama"].url + "/v1"}]},
        {"name": "claude", "deployments": [{"name": "anthropic-up", "provider": "anthropic",
                                            "model": "claude-emulated-3", "api_base": up["anthropic"].url,
                                            "api_key": KEY}]},
        {"name": "gemini", "deployments": [{"name": "gemini-up", "provider": "gemini", "model": "gemini-2.5-flash",
                                            "api_base": up["gemini"].url, "api_key": GEMINI_KEY}]},
        {"name": "command", "deployments": [{"name": "cohere-up", "provider": "cohere", "model": "command-a-03-2025",
                                             "api_base": up["cohere"].url, "api_key": KEY}]},
        {"name": "nova", "deployments": [{"name": "bedrock-up", "provider": "bedrock", "model": "amazon.nova-pro-v1:0",
                                          "api_base": up["bedrock"].url, "region": "us-east-1",
                                          "aws_access_key_id": TEST_ACCESS_KEY,
                                          "aws_secret_access_key": TEST_SECRET_KEY}]},
        {"name": "gone", "deployments": [{"name": "openai-down", "provider": "openai", "model": "gpt-4.1",
                                          "api_base": f"http://127.0.0.1:{dead_port}/v1",
                                          "api_key": "sk-dead-upstream-secret-7f3a9c1e", "timeout": 2}]},
        {"name": "demo", "deployments": [{"provider": "demo", "model": "demo"}]},
    ]


def wait_until(check: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.05)


def catalog(gw: GatewayThread, query: str = "limit=1000") -> dict[str, Any]:
    r = httpx.get(f"{gw.url}/api/models/search?{query}", headers={"authorization": f"Bearer {MASTER}"})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_discovery_reads_every_provider_and_keeps_an_unreachable_one_stale(
        upstreams: dict[str, BackgroundServer], tmp_path: Path) -> None:
    dead_port = free_port()
    config = {"models": deployments(upstreams, dead_port), "discovery": {"enabled": True, "interval": 3600,
                                                                         "timeout": 3},
              "auth": {"master_key": MASTER}, "database": {"url": f"sqlite:///{tmp_path}/gw.db"}}
    with GatewayThread(config) as gw:
        # the first refresh runs in the background at start: wait for every listing to have been tried
        wait_until(lambda: all(s["checked_at"] for s in catalog(gw, "limit=1")["discovery"]["providers"]
                               if s["supported"]))
        status = {s["deployments"][0]: s for s in catalog(gw, "limit=1")["discovery"]["providers"]}
        assert status["openai-up"]["deployments"] == ["openai-up", "openai-up-2"]  # one listing for both
        assert status["demo/demo/0"]["supported"] is False
        counts = {name: s["models"] for name, s in status.items() if s["supported"]}
        assert counts == {"openai-up": len(OpenAIEmulatorOptions().models), "ollama": len(OLLAMA_MODELS),
                          "anthropic-up": len(ANTHROPIC_MODELS), "gemini-up": len(GeminiEmulatorOptions().models),
                          "cohere-up": len(COHERE_MODELS), "bedrock-up": len(ACTIVE_BEDROCK), "openai-down": 0}
        down = status["openai-down"]
        assert down["stale"] is True and down["error"] and down["refreshed_at"] is None
        assert str(dead_port) not in down["error"] and "sk-dead" not in down["error"]  # scrubbed
        assert all(not s["stale"] for n, s in status.items() if n != "openai-down")

        cards = {c["id"]: c for c in catalog(gw, "discovered=true&limit=1000")["data"]}
        assert set(cards) == {*OpenAIEmulatorOptions().models, *OLLAMA_MODELS, *ANTHROPIC_MODELS,
                              *GeminiEmulatorOptions().models, *COHERE_MODELS, *ACTIVE_BEDROCK}
        assert cards["gpt-4o-mini"]["deployments"] == ["openai-up"] and cards["gpt-4o-mini"]["models"] == ["gpt"]
        assert cards["gpt-4o-mini"]["prices"]["input"] == 0.15  # a known model keeps its card
        llama = cards["llama3.2:latest"]  # served through the Ollama wildcard, unknown to the catalog
        assert llama["deployments"] == ["ollama"] and llama["models"] == ["local/*"]
        assert llama["provider"] == "openai" and "ollama" in llama["source"] and llama["prices"]["input"] is None
        assert cards["claude-emulated-7"]["context_window"] == 200_000  # from Anthropic's max_input_tokens
        nova = cards["amazon.nova-pro-v1:0"]
        assert nova["supports_vision"] and nova["deployments"] == ["bedrock-up"] and "bedrock" in nova["providers"]
        assert "amazon.titan-text-express-v1" not in cards  # LEGACY: left out
        assert cards["gemini-2.5-pro"]["deployments"] == [] and cards["gemini-2.5-pro"]["discovered"]
        assert cards["embed-v4.0"]["supports_embeddings"]
        assert catalog(gw, "discovered=true&provider=cohere&supports_embeddings=true")["total"] == len(EMBED_MODELS)

        # the Cohere upstream fails (its error quotes the key): its list stays, stale, with the error scrubbed
        upstreams["cohere"].state.faults = FaultPlan(status=503, message=f"overloaded, key {KEY}",
                                                     paths=["/v1/models"])
        try:
            gw.run(gw.gateway.discovery.refresh())
            after = {s["deployments"][0]: s for s in catalog(gw, "limit=1")["discovery"]["providers"]}
            assert after["cohere-up"]["stale"] and after["cohere-up"]["models"] == len(COHERE_MODELS)
            assert after["cohere-up"]["refreshed_at"] == status["cohere-up"]["refreshed_at"]
            assert "overloaded" in after["cohere-up"]["error"] and KEY not in str(after)
            kept = {c["id"]: c for c in catalog(gw, "provider=cohere&discovered=true&limit=1000")["data"]}
            assert set(kept) == set(COHERE_MODELS)
            assert kept["command-a-03-2025"]["stale"] and "overloaded" in kept["command-a-03-2025"]["error"]
            assert not after["gemini-up"]["stale"]
        finally:
            upstreams["cohere"].state.faults = None
        gw.run(gw.gateway.discovery.refresh())  # back: fresh again
        back = {s["deployments"][0]: s for s in catalog(gw, "limit=1")["discovery"]["providers"]}
        assert not back["cohere-up"]["stale"] and back["cohere-up"]["error"] is None
        assert back["cohere-up"]["refreshed_at"] > status["cohere-up"]["refreshed_at"]


def test_a_slow_listing_never_holds_up_calls(upstreams: dict[str, BackgroundServer], tmp_path: Path) -> None:
    cohere_up = upstreams["cohere"]
    cohere_up.state.faults = FaultPlan(latency_ms=1500, paths=["/v1/models"])  # the listing only
    config = {"models": [{"name": "command", "deployments": [{"name": "cohere-slow", "provider": "cohere",
                                                              "model": "command-a-03-2025", "api_base": cohere_up.url,
                                                              "api_key": KEY}]}],
              "discovery": {"enabled": True, "timeout": 10}, "auth": {"master_key": MASTER},
              "database": {"url": f"sqlite:///{tmp_path}/gw.db"}}
    try:
        with GatewayThread(config) as gw:
            r = httpx.post(gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {MASTER}"},
                           json={"model": "command", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
            assert r.status_code == 200
            pending = catalog(gw, "limit=1")["discovery"]["providers"][0]
            assert pending["checked_at"] and pending["refreshed_at"] is None and not pending["stale"]  # in flight
            wait_until(lambda: catalog(gw, "limit=1")["discovery"]["providers"][0]["refreshed_at"] is not None)
    finally:
        cohere_up.state.faults = None


def test_a_reload_starts_from_the_lists_the_replaced_gateway_had(upstreams: dict[str, BackgroundServer],
                                                                 tmp_path: Path) -> None:
    from relaygate.config import parse_config
    from relaygate.gateway import Gateway

    models = [{"name": "gemini", "deployments": [{"name": "gemini-up", "provider": "gemini", "model": "gemini-2.5-pro",
                                                  "api_base": upstreams["gemini"].url, "api_key": GEMINI_KEY}]}]
    db = {"url": f"sqlite:///{tmp_path}/gw.db"}

    async def go() -> tuple[int, int, float | None]:
        first = await Gateway.create(parse_config({"models": models, "database": db, "request_log": {
            "enabled": False}}, {}))
        await first.discovery.refresh()
        second = await Gateway.create(parse_config({"models": [*models, {"name": "demo", "deployments": [
            {"provider": "demo", "model": "demo"}]}], "database": db, "request_log": {"enabled": False}}, {}),
            previous=first)
        try:
            kept = second.discovery.listings[0]
            return len(first.discovery.listings[0].models), len(kept.models), kept.refreshed_at
        finally:
            await second.close(keep=[])
            await first.close(keep=[second])

    before, after, refreshed = asyncio.run(go())
    assert before == after == len(GeminiEmulatorOptions().models) and refreshed is not None


def test_discovery_is_on_by_default_and_never_holds_up_start_or_a_call(tmp_path: Path) -> None:
    """The default config asks at start, in the background: an upstream whose listing never answers delays
    neither the gateway's start nor a call; ``enabled: false`` asks nothing."""
    import socket

    with socket.socket() as silent:  # accepts connections and never answers a byte
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        slow = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        with BackgroundServer(openai_app(OpenAIEmulatorOptions(api_key=KEY))) as oai:
            def config(**extra: Any) -> dict[str, Any]:
                return {"models": [
                    {"name": "gpt", "deployments": [{"provider": "openai", "model": "gpt-4o-mini",
                                                     "api_base": oai.url + "/v1", "api_key": KEY}]},
                    {"name": "stuck", "deployments": [{"provider": "openai", "model": "gpt-4o",
                                                       "api_base": slow, "api_key": KEY}]}],
                    "database": {"url": f"sqlite:///{tmp_path}/gw.db"}, "request_log": {"enabled": False}, **extra}

            started = time.monotonic()
            with GatewayThread(config()) as gw:
                r = httpx.post(gw.url + "/v1/chat/completions", timeout=5,
                               json={"model": "gpt", "messages": [{"role": "user", "content": "hi"}]})
                assert r.status_code == 200
                assert time.monotonic() - started < 8  # well before the stuck listing's 10 s timeout
                assert gw.gateway.config.discovery.enabled is True
                by_name = {lst.name: lst for lst in gw.gateway.discovery.listings}
                deadline = time.monotonic() + 10
                while by_name["gpt/openai/0"].refreshed_at is None:
                    assert time.monotonic() < deadline, "the default start-up listing never came"
                    time.sleep(0.02)
                assert "gpt-4o-mini" in by_name["gpt/openai/0"].ids
                assert by_name["stuck/openai/0"].refreshed_at is None  # still waiting, in the background
            with GatewayThread(config(discovery={"enabled": False})) as gw:
                time.sleep(0.3)
                assert all(lst.checked_at is None for lst in gw.gateway.discovery.listings)
                assert gw.gateway.discovery._task is None


def test_a_paged_listing_is_followed_to_its_last_page_and_no_further() -> None:
    """``read_pages`` (the Anthropic, Gemini and Cohere listings): each page's token asks for the next, in the
    query each provider names it by; the last page (no token, or has_more false) ends it."""
    from relaygate.providers.listing import (
        MAX_MODELS,
        anthropic_after,
        cohere_models,
        read_pages,
        token_after,
    )

    pages = {"/v1/models?page_size=1000": {"models": [{"name": "a"}], "next_page_token": "t/1"},
             "/v1/models?page_size=1000&page_token=t%2F1": {"models": [{"name": "b"}], "next_page_token": ""}}
    asked: list[str] = []

    async def get(url: str) -> dict[str, Any]:
        asked.append(url)
        return pages[url]

    found = asyncio.run(read_pages(get, "/v1/models?page_size=1000", cohere_models,
                                   token_after("next_page_token", "page_token")))
    assert [m.id for m in found] == ["a", "b"] and asked == list(pages)
    assert anthropic_after({"has_more": True, "last_id": "m 1"}) == "&after_id=m%201"
    assert anthropic_after({"has_more": False, "last_id": "m"}) is None

    async def endless(url: str) -> dict[str, Any]:  # a listing that always says there is more
        return {"models": [{"name": f"m{i}"} for i in range(1000)], "next_page_token": "again"}

    many = asyncio.run(read_pages(endless, "/", cohere_models, token_after("next_page_token", "page_token")))
    assert len(many) == MAX_MODELS
