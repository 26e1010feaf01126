"""Claude on Vertex AI: the anthropic SDK's AnthropicVertex client checks the emulator; relaygate's
``vertex_anthropic`` provider is driven by the openai SDK and by the anthropic SDK through /v1/messages."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from relaygate.testing.anthropic import AnthropicEmulatorOptions, create_app
from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import GatewayThread

TOKEN = "ya29.vertex-access-token-0123456789"
PREFIX = "/v1/projects/proj-1/locations/us-east5/publishers/anthropic/models/"


@pytest.fixture(scope="module")
def emu() -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(AnthropicEmulatorOptions(api_key=TOKEN))) as srv:
        yield srv


@pytest.fixture(scope="module")
def gw(emu: BackgroundServer) -> Iterator[GatewayThread]:
    dep = {"provider": "vertex_anthropic", "model": "claude-sonnet-4-6", "project": "proj-1",
           "location": "us-east5", "api_base": emu.url, "api_key": TOKEN, "timeout": 10}
    with GatewayThread({"models": [{"name": "claude", "deployments": [dep]}]}) as g:
        yield g


def last(emu: BackgroundServer) -> dict[str, Any]:
    return emu.state.requests[-1]


def test_the_sdks_vertex_client_is_served_by_the_emulator(emu: BackgroundServer) -> None:
    c = anthropic.AnthropicVertex(project_id="proj-1", region="us-east5", access_token=TOKEN,
                                  base_url=emu.url + "/v1", max_retries=0)
    m = c.messages.create(model="claude-sonnet-4-6", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    assert m.content[0].text == "Hello! You said: hi"  # type: ignore[union-attr]
    assert last(emu)["path"] == PREFIX + "claude-sonnet-4-6:rawPredict"
    with c.messages.stream(model="claude-sonnet-4-6", max_tokens=20, messages=[{"role": "user", "content": "a b"}]) as s:
        assert "".join(s.text_stream) == "Hello! You said: a b"
    assert last(emu)["path"] == PREFIX + "claude-sonnet-4-6:streamRawPredict"
    assert c.messages.count_tokens(model="claude-sonnet-4-6",
                                   messages=[{"role": "user", "content": "a b"}]).input_tokens == 6
    bad = anthropic.AnthropicVertex(project_id="proj-1", region="us-east5", access_token="wrong",
                                    base_url=emu.url + "/v1", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": "x"}])


def test_openai_clients_reach_claude_on_vertex(gw: GatewayThread, emu: BackgroundServer) -> None:
    c = openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)
    r = c.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hello"}], temperature=0.5)
    assert r.choices[0].message.content == "Hello! You said: hello"
    sent = last(emu)
    assert sent["path"] == PREFIX + "claude-sonnet-4-6:rawPredict"
    assert sent["headers"]["authorization"] == f"Bearer {TOKEN}" and "anthropic-version" not in sent["headers"]
    assert sent["json"]["anthropic_version"] == "vertex-2023-10-16" and "model" not in sent["json"]
    assert sent["json"]["temperature"] == 0.5
    chunks = list(c.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x y"}],
                                            stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == "Hello! You said: x y"
    assert last(emu)["path"].endswith(":streamRawPredict")


def test_anthropic_clients_reach_claude_on_vertex_natively(gw: GatewayThread, emu: BackgroundServer) -> None:
    c = anthropic.Anthropic(api_key="k", base_url=gw.url, max_retries=0)
    m = c.messages.create(model="claude", max_tokens=20, messages=[{"role": "user", "content": "hey"}],
                          extra_body={"top_k": 3})
    assert m.content[0].text == "Hello! You said: hey"  # type: ignore[union-attr]
    assert last(emu)["json"]["top_k"] == 3  # the client's own request, in Vertex's form
    assert c.messages.count_tokens(model="claude", messages=[{"role": "user", "content": "a"}]).input_tokens == 5
    assert last(emu)["path"] == PREFIX + "count-tokens:rawPredict"


def test_vertex_deployments_need_a_project() -> None:
    from relaygate.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as e:
        parse_config({"models": [{"name": "c", "deployments": [
            {"provider": "vertex_anthropic", "model": "claude-sonnet-4-6", "api_key": TOKEN}]}]}, {})
    assert e.value.errors == ["models[0].deployments[0].project: required for provider vertex_anthropic"]
