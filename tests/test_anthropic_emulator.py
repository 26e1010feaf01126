"""The Anthropic emulator checked against its oracle, the official anthropic SDK (2.x)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from relaygate.testing.anthropic import AnthropicEmulatorOptions, create_app
from relaygate.testing.base import BackgroundServer, FaultPlan

KEY = "sk-ant-emulator-key-0123456789"
MODEL = "claude-sonnet-4-6"
TOOLS: list[Any] = [{"name": "get_weather", "description": "weather",
                     "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                                      "required": ["city"]}}]


@pytest.fixture(scope="module")
def emu() -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(AnthropicEmulatorOptions(api_key=KEY))) as srv:
        yield srv


@pytest.fixture
def client(emu: BackgroundServer) -> anthropic.Anthropic:
    emu.state.faults = None
    return anthropic.Anthropic(api_key=KEY, base_url=emu.url, max_retries=0)


def legacy_client(emu: BackgroundServer) -> anthropic.Anthropic:
    """An SDK 2.x client speaking 2023-06-01, which takes the key as x-api-key."""
    return anthropic.Anthropic(api_key=None, auth_token=None, base_url=emu.url, max_retries=0,
                               default_headers={"anthropic-version": "2023-06-01", "x-api-key": KEY})


def test_sdk_parses_a_message_with_usage(client: anthropic.Anthropic) -> None:
    m = client.messages.create(model=MODEL, max_tokens=100, system="be kind",
                               messages=[{"role": "user", "content": "hi there"}])
    assert m.content[0].type == "text" and m.content[0].text == "Hello! You said: hi there [system: be kind]"
    assert m.stop_reason == "end_turn" and m.usage.input_tokens > 0 and m.usage.output_tokens == 8
    assert m.usage.cache_read_input_tokens == 0 and m._request_id and m._request_id.startswith("req_")


def test_sdk_streams_text_and_tool_use(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=MODEL, max_tokens=100, tools=TOOLS,
                                messages=[{"role": "user", "content": "Paris"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "I'll use get_weather."
    assert final.stop_reason == "tool_use"
    use = final.content[1]
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris"}
    r = client.messages.create(model=MODEL, max_tokens=100, tools=TOOLS, messages=[
        {"role": "user", "content": "Paris"}, {"role": "assistant", "content": final.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}])
    assert r.content[0].text == "The tool returned: sunny"  # type: ignore[union-attr]


def test_stream_event_sequence_is_anthropics(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "a b"}]) as s:
        kinds = [e.type for e in s]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds[-2] == "message_delta" and "content_block_start" in kinds and "content_block_stop" in kinds


def test_max_tokens_is_required(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as e:
        client.post("/v1/messages", body={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
                    cast_to=object)
    assert "max_tokens: Field required" in str(e.value)


def test_version_2026_rejects_sampling_params_even_at_defaults(client: anthropic.Anthropic) -> None:
    for name, value in (("temperature", 1.0), ("top_p", 1.0), ("top_k", 5)):
        with pytest.raises(anthropic.BadRequestError) as e:
            client.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}],
                                   extra_body={name: value})
        assert f"{name}: Extra inputs are not permitted" in str(e.value)


def test_version_2023_accepts_temperature_with_x_api_key(emu: BackgroundServer) -> None:
    m = legacy_client(emu).messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}],
                                           extra_body={"temperature": 0.3})
    assert m.content[0].text == "Hello! You said: x"  # type: ignore[union-attr]


def test_each_version_wants_the_key_in_its_header(emu: BackgroundServer) -> None:
    with httpx.Client(base_url=emu.url) as h:
        body = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
        bearer_on_2023 = h.post("/v1/messages", json=body, headers={"anthropic-version": "2023-06-01",
                                                                    "authorization": f"Bearer {KEY}"})
        x_key_on_2026 = h.post("/v1/messages", json=body, headers={"anthropic-version": "2026-10-21",
                                                                   "x-api-key": KEY})
        missing_version = h.post("/v1/messages", json=body, headers={"x-api-key": KEY})
    assert bearer_on_2023.status_code == 401 and x_key_on_2026.status_code == 401
    assert bearer_on_2023.json()["error"]["type"] == "authentication_error"
    assert missing_version.status_code == 400 and "anthropic-version" in missing_version.json()["error"]["message"]


def test_lenient_auth_prefers_x_api_key_like_the_real_api() -> None:
    with BackgroundServer(create_app(AnthropicEmulatorOptions(api_key=KEY, strict_auth=False))) as srv:
        c = anthropic.Anthropic(api_key=KEY, base_url=srv.url, max_retries=0,
                                default_headers={"anthropic-version": "2023-06-01"})
        assert c.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}]).id
        with httpx.Client(base_url=srv.url) as h:
            r = h.post("/v1/messages", json={"model": MODEL, "max_tokens": 5, "messages": [
                {"role": "user", "content": "x"}]}, headers={"anthropic-version": "2026-10-21",
                                                              "x-api-key": "wrong", "authorization": f"Bearer {KEY}"})
        assert r.status_code == 401


def test_tool_result_without_tool_use_is_rejected(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model=MODEL, max_tokens=10, messages=[
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "r"}]}])
    assert "unexpected `tool_use_id`" in str(e.value)


@pytest.mark.parametrize(("status", "error_class", "kind"), [
    (529, anthropic.OverloadedError, "overloaded_error"),
    (429, anthropic.RateLimitError, "rate_limit_error"),
    (401, anthropic.AuthenticationError, "authentication_error"),
    (500, anthropic.InternalServerError, "api_error"),
])
def test_faults_are_parsed_as_the_sdk_error_classes(client: anthropic.Anthropic, emu: BackgroundServer,
                                                     status: int, error_class: type[Exception], kind: str) -> None:
    emu.state.faults = FaultPlan(status=status, count=1, retry_after=2)
    with pytest.raises(error_class) as e:
        client.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}])
    err: Any = e.value
    assert err.body["error"]["type"] == kind and err.response.headers["retry-after"] == "2"
    assert err.request_id.startswith("req_")
    if status == 429:
        assert err.response.headers["anthropic-ratelimit-requests-remaining"] == "0"


def test_error_event_mid_stream_raises_in_the_sdk(client: anthropic.Anthropic, emu: BackgroundServer) -> None:
    emu.state.faults = FaultPlan(status=529, count=1, disconnect_after_chunks=4)
    got: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as e:
        with client.messages.stream(model=MODEL, max_tokens=50,
                                    messages=[{"role": "user", "content": "a b c"}]) as s:
            got.extend(s.text_stream)
    assert got == ["Hello! "] and "overloaded_error" in str(e.value)


def test_prompt_cache_writes_then_reads(client: anthropic.Anthropic) -> None:
    system: Any = [{"type": "text", "text": "a long shared prefix for caching",
                    "cache_control": {"type": "ephemeral"}}]
    first = client.messages.create(model=MODEL, max_tokens=10, system=system,
                                   messages=[{"role": "user", "content": "q1"}])
    second = client.messages.create(model=MODEL, max_tokens=10, system=system,
                                    messages=[{"role": "user", "content": "q2"}])
    assert first.usage.cache_creation_input_tokens == 6 and first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == 6 and second.usage.cache_creation_input_tokens == 0


def test_count_tokens(client: anthropic.Anthropic) -> None:
    r = client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "a b c"}])
    assert r.input_tokens == 7
