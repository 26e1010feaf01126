"""A model that selects its deployments by capability (``select``): config errors with their paths, calls
routed to the matching deployments, and the selection resolved again when discovery refreshes."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from relaygate.config import ConfigError, parse_config
from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import GatewayThread
from relaygate.testing.gemini import DEFAULT_MODELS as GEMINI_MODELS
from relaygate.testing.gemini import GeminiEmulatorOptions
from relaygate.testing.gemini import create_app as gemini_app
from relaygate.testing.openai import OpenAIEmulatorOptions
from relaygate.testing.openai import create_app as openai_app
from tests.conftest import UPSTREAM_KEY

GEMINI_KEY = "AIzaSySelectKey0123456789abcdefghijklm"
MASTER = "sk-master-" + "a4c8e2f6" * 5
APP_KEY = "sk-app-select-2b7d9f1e3a5c8e0b4d6f9a1c3e5b7d9f"
NEW_MODEL = "gemini-exp-9999"  # unknown to the bundled catalog: only discovery tells its window


@pytest.mark.parametrize(("model", "error"), [
    ({"name": "a", "select": {}}, "models[0].select: select needs at least one condition"),
    ({"name": "a", "select": {"max_cost": -1}}, "models[0].select.max_cost: Input should be greater than or equal to 0"),
    ({"name": "a", "select": {"vision": True}}, "models[0].select.vision: unknown field"),
    ({"name": "a", "select": {"configured": True}}, "models[0].select.configured: unknown field"),  # search only
    ({"name": "a", "select": "vision"}, "models[0].select: expected a mapping"),
    ({"name": "a", "select": {"supports_vision": "maybe"}},
     "models[0].select.supports_vision: Input should be a valid boolean, unable to interpret input"),
    ({"name": "a", "select": {"max_cost": 1}, "deployments": [{"provider": "demo", "model": "demo"}]},
     "models[0].deployments: a model with select has no deployments of its own"),
    ({"name": "a"}, "models[0]: a model needs deployments (or a select)"),
    ({"name": "*", "select": {"max_cost": 1}},
     "models[0].select: the wildcard model cannot select (it sends the client's name)"),
])
def test_a_bad_select_is_a_config_error_naming_its_path(model: dict[str, object], error: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"models": [model]}, {})
    assert e.value.errors == [error]


def test_select_routes_to_the_matching_deployments_and_follows_discovery(tmp_path: Path) -> None:
    # the Gemini upstream does not serve the new model yet: it starts to between two discovery refreshes
    gemini = GeminiEmulatorOptions(api_key=GEMINI_KEY, models=GEMINI_MODELS)
    with BackgroundServer(openai_app(OpenAIEmulatorOptions(api_key=UPSTREAM_KEY))) as oai, \
            BackgroundServer(gemini_app(gemini)) as gem:
        def openai(name: str, model: str) -> dict[str, object]:
            return {"name": name, "deployments": [{"name": name + "-dep", "provider": "openai", "model": model,
                                                   "api_base": oai.url + "/v1", "api_key": UPSTREAM_KEY}]}

        config = {
            "models": [
                openai("mini", "gpt-4o-mini"),  # vision, $0.15 per 1M input
                openai("o4", "o4-mini"),  # vision, $1.10: over the cost limit
                openai("four", "gpt-4o"),  # vision, $2.50
                {"name": "cheap-vision", "select": {"supports_vision": True, "max_cost": 1}},
                {"name": "fresh", "deployments": [{"name": "gemini-new", "provider": "gemini", "model": NEW_MODEL,
                                                   "api_base": gem.url, "api_key": GEMINI_KEY}]},
                {"name": "long", "select": {"min_context": 1_000_000, "provider": "gemini"}},
            ],
            "auth": {"master_key": MASTER, "keys": [{"id": "sel-app", "key": APP_KEY, "models": ["cheap-vision"]}]},
            "database": {"url": f"sqlite:///{tmp_path}/gw.db"},
        }
        with GatewayThread(config) as gw:
            def chat(model: str) -> httpx.Response:
                return httpx.post(gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {APP_KEY}"
                                  if model == "cheap-vision" else f"Bearer {MASTER}"},
                                  json={"model": model, "messages": [{"role": "user", "content": "hi"}]}, timeout=10)

            r = chat("cheap-vision")
            assert r.status_code == 200 and r.headers["x-relaygate-deployment"] == "mini-dep"
            assert r.json()["model"] == "gpt-4o-mini"
            assert gw.gateway.table.models["cheap-vision"][0].stats is gw.gateway.table.models["mini"][0].stats
            mine = httpx.get(gw.url + "/api/models", headers={"authorization": f"Bearer {APP_KEY}"}).json()
            assert [(c["id"], c["models"]) for c in mine["data"]] == [("gpt-4o-mini", ["cheap-vision", "mini"])]

            # discovery is on by default: the start-up listings arrive in the background, without the new
            # model, whose window nothing tells yet: nothing to select
            deadline = time.monotonic() + 10
            while gw.gateway.discovery.version < 1:
                assert time.monotonic() < deadline, "no start-up discovery within 10 s"
                time.sleep(0.02)
            before = chat("long")
            assert before.status_code == 503 and before.json()["error"]["code"] == "no_deployment_selected"
            gemini.models = (*GEMINI_MODELS, NEW_MODEL)  # the upstream now serves it
            gw.run(gw.gateway.discovery.refresh())  # what the background task does on its interval
            after = chat("long")
            assert after.status_code == 200 and after.headers["x-relaygate-deployment"] == "gemini-new"
            assert [d.name for d in gw.gateway.table.models["long"]] == ["gemini-new"]
