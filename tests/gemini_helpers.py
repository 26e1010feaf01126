"""Shared by the Gemini tests: the emulator as a fixture, a gateway in front of it, request inspection."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
import requests

from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import GatewayThread
from relaygate.testing.gemini import GeminiEmulatorOptions, create_app

KEY = "AIzaSyTestKey0123456789abcdefghijklmnop"
TOKEN = "ya29.test-access-token-0123456789"


def run_emulator() -> Iterator[BackgroundServer]:
    """A Gemini emulator requiring KEY (AI Studio) and TOKEN (Vertex); use as a module fixture."""
    opts = GeminiEmulatorOptions(api_key=KEY, bearer_token=TOKEN, context_windows={"gemini-2.0-flash": 50},
                                 cached_tokens=3)
    with BackgroundServer(create_app(opts)) as srv:
        yield srv


def reset(emulator: BackgroundServer) -> None:
    requests.delete(emulator.url + "/_emulator/faults", timeout=5)
    requests.delete(emulator.url + "/_emulator/requests", timeout=5)


def gemini_model(name: str, model: str, emulator: BackgroundServer, **extra: Any) -> dict[str, Any]:
    """A config ``models`` entry served by the emulator through AI Studio's API."""
    d = {"provider": "gemini", "model": model, "api_base": emulator.url, "api_key": KEY, "timeout": 5, **extra}
    return {"name": name, "deployments": [d]}


def vertex_deployment(emulator: BackgroundServer, **extra: Any) -> dict[str, Any]:
    return {"provider": "vertex", "model": "gemini-2.5-flash", "api_base": emulator.url, "api_key": TOKEN,
            "project": "my-proj", "location": "europe-west4", "timeout": 5, **extra}


def run_gateway(models: list[dict[str, Any]]) -> Iterator[GatewayThread]:
    with GatewayThread({"models": models}) as gw:
        yield gw


def sdk_client(gateway: GatewayThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=10)


def recorded(emulator: BackgroundServer) -> list[dict[str, Any]]:
    """The model calls the emulator received (control and token requests left out)."""
    reqs = requests.get(emulator.url + "/_emulator/requests", timeout=5).json()["requests"]
    return [r for r in reqs if ":" in r["path"]]


def fault(emulator: BackgroundServer, **plan: Any) -> None:
    requests.post(emulator.url + "/_emulator/faults", json=plan, timeout=5).raise_for_status()


# fixtures for the test modules to bind: ``emulator, _reset, client = GEMINI_FIXTURES``
GEMINI_FIXTURES = (pytest.fixture(scope="module", name="emulator")(run_emulator),
                   pytest.fixture(autouse=True, name="_reset")(reset),
                   pytest.fixture(name="client")(sdk_client))
