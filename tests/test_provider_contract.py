"""The provider contract: what a provider serves is declared on its class and reached through its route
table; a deadline, not a call, bounds its upstream requests (health probes included)."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest
import requests

from relaygate.config import PROVIDER_TYPES, AzureDeployment, OpenAIDeployment
from relaygate.core.call import Call, Route
from relaygate.core.errors import Unsupported, UpstreamTimeout
from relaygate.gateway import new_client
from relaygate.providers import provider_class
from relaygate.providers.base import Provider
from relaygate.testing.base import BackgroundServer
from tests.config_support import deployment
from tests.conftest import UPSTREAM_KEY


@pytest.mark.parametrize("kind", PROVIDER_TYPES)
def test_each_provider_implements_every_route_it_declares(kind: str) -> None:
    cls = provider_class(deployment(kind))
    assert Route.CHAT in cls.routes
    for route in cls.routes:  # a route's value names the method that serves it
        assert getattr(cls, route.value) is not getattr(Provider, route.value), (kind, route)


def test_a_route_a_provider_does_not_declare_is_refused_even_where_a_base_class_implements_it() -> None:
    """Azure inherits OpenAI's passthrough method but not its URLs: its route table refuses the route."""
    cfg = AzureDeployment(model="gpt-4o", api_base="https://example.openai.azure.com",
                          api_key="k")

    async def run() -> BaseException | None:
        client = new_client()
        try:
            provider = provider_class(cfg)(cfg, client)
            call = Call(id="t", route=Route.PASSTHROUGH, model="m", body={})
            try:
                await provider.handlers[Route.PASSTHROUGH](call)
            except Unsupported as e:
                return e
            return None
        finally:
            await client.close()

    err = asyncio.run(run())
    assert isinstance(err, Unsupported) and "does not serve OpenAI's other routes" in err.message


def test_a_route_only_some_deployments_serve_goes_straight_to_those(openai_emulator: BackgroundServer,
                                                                     start_gateway: Any) -> None:
    """Embeddings on a model served by the demo provider (chat only) and OpenAI: never a wasted attempt."""
    gw = start_gateway({"models": [{"name": "m", "strategy": "round_robin", "deployments": [
        {"provider": "demo", "model": "demo"},
        {"provider": "openai", "model": "text-embedding-3-small", "api_base": openai_emulator.url + "/v1",
         "api_key": UPSTREAM_KEY}]}]})
    for _ in range(4):
        r = requests.post(gw.base_url + "/embeddings", json={"model": "m", "input": "hi"}, timeout=10)
        assert r.status_code == 200 and r.headers["x-relaygate-attempts"] == "1"
        assert r.headers["x-relaygate-deployment"] == "m/openai/1"
    chat = [requests.post(gw.base_url + "/chat/completions", timeout=10,
                          json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}) for _ in range(2)]
    assert sorted(c.headers["x-relaygate-deployment"] for c in chat) == ["m/demo/0", "m/openai/1"]


def test_a_health_probe_gives_up_at_its_deadline() -> None:
    """The deadline bounds the probe's upstream request itself (the deployment's own timeout is longer)."""
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        cfg = OpenAIDeployment(model="gpt-4o-mini", api_base=f"http://127.0.0.1:{port}/v1",
                               api_key="k", timeout=30)

        async def run() -> tuple[BaseException | None, float]:
            client = new_client()
            started = time.monotonic()
            try:
                await provider_class(cfg)(cfg, client).probe(started + 0.3)
            except UpstreamTimeout as e:
                return e, time.monotonic() - started
            finally:
                await client.close()
            return None, time.monotonic() - started

        err, took = asyncio.run(run())
    assert isinstance(err, UpstreamTimeout) and took < 2.0
