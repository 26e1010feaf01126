"""``GET /api/models`` and ``/api/models/search``: who may ask, every filter and its 400s, sorting, paging."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import GatewayThread
from relaygate.testing.openai import OpenAIEmulatorOptions, create_app
from tests.conftest import UPSTREAM_KEY, StartGateway

MASTER = "sk-master-" + "7c2e9a4f" * 5
APP_KEY = "sk-app-cat-4d8b2f6a1e9c07b3d5a8f2c6e1b94d7a0c3f5e8b"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    tmp: Path = tmp_path_factory.mktemp("catalog")
    with BackgroundServer(create_app(OpenAIEmulatorOptions(api_key=UPSTREAM_KEY))) as emu:
        base = emu.url + "/v1"
        config = {
            "models": [
                {"name": "gpt", "deployments": [{"provider": "openai", "model": "gpt-4o-mini", "api_base": base,
                                                 "api_key": UPSTREAM_KEY}]},
                {"name": "claude", "deployments": [{"provider": "anthropic", "model": "claude-haiku-4-5",
                                                    "api_base": "http://127.0.0.1:9", "api_key": "k"}]},
                {"name": "*", "deployments": [{"provider": "openai", "model": "*", "api_base": base,
                                               "api_key": UPSTREAM_KEY}]},
            ],
            "prices": {"house-model": {"provider": "house", "context_window": 4096, "input_cost_per_token": 0.0,
                                       "output_cost_per_token": 0.0}},
            "auth": {"master_key": MASTER, "keys": [{"id": "cat-app", "key": APP_KEY, "models": ["gpt"]}]},
            "database": {"url": f"sqlite:///{tmp}/gw.db"},
        }
        with GatewayThread(config) as gw:
            # discovery is on by default: its start-up listings arrive in the background (bounded wait)
            deadline = time.monotonic() + 10
            while gw.gateway.discovery.version < 1:
                assert time.monotonic() < deadline, "no start-up discovery within 10 s"
                time.sleep(0.02)
            yield gw


def get(gw: GatewayThread, query: str = "", key: str = MASTER, path: str = "/api/models/search") -> httpx.Response:
    return httpx.get(f"{gw.url}{path}{'?' + query if query else ''}", headers={"authorization": f"Bearer {key}"})


def everything(gw: GatewayThread) -> list[dict[str, Any]]:
    body = get(gw, "limit=1000").json()
    assert body["has_more"] is False and body["total"] == len(body["data"])
    return list(body["data"])


def ids(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and not body["has_more"]
    return [c["id"] for c in body["data"]]


def test_the_master_key_sees_every_card_with_who_serves_it(gateway: GatewayThread) -> None:
    cards = {c["id"]: c for c in everything(gateway)}
    assert len(cards) > 80
    mini = cards["gpt-4o-mini"]
    # configured for "gpt", and (listed by the upstream that "gpt" and "*" share) served by "*" too
    assert mini["provider"] == "openai" and mini["deployments"] == ["*/openai/0", "gpt/openai/0"]
    assert mini["models"] == ["*", "gpt"]
    assert mini["supports_vision"] is True and mini["context_window"] == 128000
    assert mini["prices"]["input"] == 0.15 and mini["source"] and mini["as_of"]
    assert mini["discovered"] is True and mini["stale"] is False and mini["error"] is None
    haiku = cards["claude-haiku-4-5"]  # its upstream is unreachable: configured, never listed
    assert haiku["deployments"] == ["claude/anthropic/0"] and haiku["discovered"] is False
    status = {p["deployments"][0]: p for p in get(gateway).json()["discovery"]["providers"]}
    assert status["claude/anthropic/0"]["stale"] is True and status["claude/anthropic/0"]["error"]
    assert status["gpt/openai/0"]["deployments"] == ["gpt/openai/0", "*/openai/0"]
    assert status["gpt/openai/0"]["stale"] is False and status["gpt/openai/0"]["models"] > 0
    assert cards["house-model"]["provider"] == "house" and cards["house-model"]["overridden"] is True
    gemini3 = cards["gemini-3-pro-preview"]
    assert gemini3["prices"]["input"] is None and gemini3["deployments"] == []
    for card in cards.values():  # names and prices only: no upstream URL or key leaves
        assert "127.0.0.1" not in str(card) and UPSTREAM_KEY not in str(card)
    assert ids(get(gateway, "limit=1000", path="/api/models")) == sorted(cards)


def test_a_virtual_key_sees_only_the_models_it_may_use(gateway: GatewayThread) -> None:
    assert ids(get(gateway, key=APP_KEY)) == ["gpt-4o-mini"]
    assert get(gateway, key=APP_KEY).json()["discovery"]["providers"] == []
    assert get(gateway, key="sk-not-a-key").status_code == 401
    assert httpx.get(gateway.url + "/api/models").status_code == 401


FILTERS: list[tuple[str, Any]] = [
    ("provider=anthropic", lambda c: "anthropic" in c["providers"]),
    ("supports_vision=true", lambda c: c["supports_vision"]),
    ("supports_tools=false", lambda c: not c["supports_tools"]),
    ("supports_audio=true", lambda c: c["supports_audio"]),
    ("supports_embeddings=true", lambda c: c["supports_embeddings"]),
    ("supports_chat=false", lambda c: not c["supports_chat"]),
    ("supports_reasoning=true", lambda c: c["supports_reasoning"]),
    ("supports_json_schema=true", lambda c: c["supports_json_schema"]),
    ("min_context=1000000", lambda c: (c["context_window"] or 0) >= 1000000),
    ("max_cost=0.5", lambda c: c["prices"]["input"] is not None and c["prices"]["input"] <= 0.5),
    ("q=HAIKU", lambda c: "haiku" in c["id"]),
    ("configured=true", lambda c: bool(c["deployments"])),
    ("provider=xai&supports_reasoning=true&max_cost=1", lambda c: "xai" in c["providers"] and c["supports_reasoning"]
     and c["prices"]["input"] is not None and c["prices"]["input"] <= 1),
]


@pytest.fixture(scope="module")
def all_cards(gateway: GatewayThread) -> list[dict[str, Any]]:
    return everything(gateway)


@pytest.mark.parametrize(("query", "keep"), FILTERS, ids=[q for q, _ in FILTERS])
def test_each_filter_keeps_exactly_the_matching_cards(gateway: GatewayThread, all_cards: list[dict[str, Any]],
                                                      query: str, keep: Any) -> None:
    expected = sorted(c["id"] for c in all_cards if keep(c))
    assert 0 < len(expected) < len(all_cards)  # the filter has something to keep and something to drop
    assert ids(get(gateway, query + "&limit=1000")) == expected


BAD: list[tuple[str, str]] = [
    ("vision=true", "vision"), ("supports_vision=yes", "supports_vision"), ("min_context=big", "min_context"),
    ("min_context=-1", "min_context"), ("max_cost=abc", "max_cost"), ("max_cost=nan", "max_cost"),
    ("max_cost=-1", "max_cost"), ("sort=price", "sort"), ("order=up", "order"), ("limit=0", "limit"),
    ("limit=5000", "limit"), ("offset=-3", "offset"), ("q=" + "x" * 201, "q"), ("provider=a%00b", "provider"),
]


@pytest.mark.parametrize(("query", "param"), BAD, ids=[p + ":" + q[:20] for q, p in BAD])
def test_an_unknown_filter_or_a_bad_value_is_a_400_naming_it(gateway: GatewayThread, query: str, param: str) -> None:
    r = get(gateway, query)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and param in err["message"]


def test_sort_by_cost_context_and_name(gateway: GatewayThread) -> None:
    by_cost = get(gateway, "sort=cost&limit=1000").json()["data"]
    prices = [c["prices"]["input"] for c in by_cost]
    priced = [p for p in prices if p is not None]
    assert priced == sorted(priced) and prices[len(priced):] == [None] * (len(prices) - len(priced))
    dearest = get(gateway, "sort=cost&order=desc&limit=1").json()["data"][0]["prices"]["input"]
    assert dearest == max(priced)
    windows = [c["context_window"] for c in get(gateway, "sort=context&limit=1000").json()["data"]]
    known = [w for w in windows if w]
    assert known == sorted(known, reverse=True) and known[0] >= 2_000_000
    names = ids(get(gateway, "sort=name&order=desc&limit=1000"))
    assert names == sorted(names, reverse=True)


def test_paging_walks_every_card_once_by_offset(gateway: GatewayThread) -> None:
    total = len(everything(gateway))
    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        body = get(gateway, f"limit=25&offset={offset}").json()
        assert len(body["data"]) <= 25 and body["total"] == total
        seen += [c["id"] for c in body["data"]]
        assert body["has_more"] is (body["next_offset"] is not None)
        offset = body["next_offset"]
        assert len(seen) <= total
    assert seen == sorted(seen) and len(set(seen)) == total
    assert get(gateway, f"offset={total + 5}").json()["data"] == []


def test_an_open_gateway_answers_anyone_and_shows_an_unknown_configured_model(
        start_gateway: StartGateway) -> None:
    gw = start_gateway({"models": [{"name": "demo", "deployments": [{"provider": "demo", "model": "demo"}]}]})
    body = httpx.get(gw.url + "/api/models?configured=true").json()
    assert [(c["id"], c["provider"], c["deployments"], c["prices"]["input"]) for c in body["data"]] == [
        ("demo", "demo", ["demo/demo/0"], None)]
    # discovery is on by default; the demo provider has no listing to read
    assert body["discovery"]["enabled"] is True and body["discovery"]["providers"][0]["supported"] is False
