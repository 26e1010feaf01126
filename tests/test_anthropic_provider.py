"""The openai SDK → relaygate → the Anthropic emulator: translation both ways, streams, errors, versions."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from aiohttp import web
from openai.types.chat import (
    ChatCompletionMessageParam,
    ChatCompletionMessageToolCallParam,
    ChatCompletionToolMessageParam,
)

from relaygate.config import ConfigError, parse_config
from relaygate.core.call import Call, Route
from relaygate.core.errors import Unavailable
from relaygate.gateway import Gateway
from relaygate.testing.anthropic import AnthropicEmulatorOptions, create_app
from relaygate.testing.base import BackgroundServer, FaultPlan
from relaygate.testing.gateway import GatewayThread

KEY = "sk-ant-api03-upstream-secret-0123456789"
TOOLS: list[Any] = [{"type": "function", "function": {
    "name": "get_weather", "description": "weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()


def anthropic_model(name: str, emu: BackgroundServer, **extra: Any) -> dict[str, Any]:
    return {"name": name, "deployments": [{"provider": "anthropic", "model": "claude-sonnet-4-6",
                                           "api_base": emu.url, "api_key": KEY, "timeout": 10, **extra}]}


@pytest.fixture(scope="module")
def emu() -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(AnthropicEmulatorOptions(api_key=KEY, context_window=400))) as srv:
        yield srv


@pytest.fixture(scope="module")
def gw(emu: BackgroundServer) -> Iterator[GatewayThread]:
    config = {"models": [
        anthropic_model("claude", emu),
        anthropic_model("claude-2026", emu, api_version="2026-10-21"),
        anthropic_model("claude-short", emu, max_tokens=3),
        anthropic_model("claude-slow", emu, timeout=0.3),
        anthropic_model("claude-haiku", emu, model="claude-haiku-4-5"),
        {"name": "claude-v1base", "deployments": [{"provider": "anthropic", "model": "claude-haiku-4-5",
                                                   "api_base": emu.url + "/v1", "api_key": KEY}]},
    ]}
    with GatewayThread(config) as g:
        yield g


@pytest.fixture
def client(gw: GatewayThread, emu: BackgroundServer) -> openai.OpenAI:
    emu.state.faults = None
    emu.state.requests.clear()
    return openai.OpenAI(base_url=gw.base_url, api_key="client-key", max_retries=0)


def sent(emu: BackgroundServer) -> dict[str, Any]:
    """The last request the emulator received."""
    return [r for r in emu.state.requests if r["path"] == "/v1/messages"][-1]


def test_a_translated_stream_read_to_its_last_event_leaves_its_connection_pooled(
        emu: BackgroundServer, gw: GatewayThread) -> None:
    """A reader outside the translator (another dialect's, here Gemini's, built on chat chunks) stops at the
    ``[DONE]`` chunk, before the translator would have asked for more: the upstream connection, whose body ends
    just after ``message_stop``, is still pooled, and the next call goes on it (the emulator sees the same
    client port). It used to be closed."""
    emu.state.requests.clear()
    emu.state.faults = FaultPlan(end_delay_ms=200)  # the body ends a while after its last event
    for _ in range(2):
        r = httpx.post(gw.url + "/v1beta/models/claude:streamGenerateContent?alt=sse",
                       json={"contents": [{"role": "user", "parts": [{"text": "pooled twice"}]}]}, timeout=10)
        assert r.status_code == 200 and '"finishReason"' in r.text, r.text
        time.sleep(0.6)  # the left body's end came, and its connection went back to the pool
    first, second = [r["port"] for r in emu.state.requests if r["path"] == "/v1/messages"]
    assert first is not None and first == second
    emu.state.faults = None


def test_plain_chat_is_translated_and_answered(client: openai.OpenAI, emu: BackgroundServer) -> None:
    r = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hello there"}])
    assert r.choices[0].message.content == "Hello! You said: hello there"
    assert r.choices[0].finish_reason == "stop"
    assert r.model == "claude-sonnet-4-6"
    assert r.usage is not None and r.usage.prompt_tokens > 0 and r.usage.completion_tokens == 5
    req = sent(emu)
    assert req["json"] == {"model": "claude-sonnet-4-6", "max_tokens": 4096,
                           "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]}
    assert req["headers"]["anthropic-version"] == "2023-06-01"
    assert req["headers"]["x-api-key"] == KEY and "authorization" not in req["headers"]


def test_api_base_ending_in_v1_is_accepted(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="claude-v1base", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "Hello! You said: hi"


def test_system_and_developer_messages_anywhere_become_the_system_prompt(client: openai.OpenAI,
                                                                          emu: BackgroundServer) -> None:
    r = client.chat.completions.create(model="claude", messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "one"},
        {"role": "assistant", "content": "ok"}, {"role": "developer", "content": "Use French."},
        {"role": "user", "content": "two"}])
    assert r.choices[0].message.content == "Hello! You said: two [system: Be brief. Use French.] [turn 2]"
    body = sent(emu)["json"]
    assert body["system"] == [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use French."}]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]


def test_single_system_prompt_is_sent_as_a_string(client: openai.OpenAI, emu: BackgroundServer) -> None:
    client.chat.completions.create(model="claude", messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "x"}])
    assert sent(emu)["json"]["system"] == "Be brief."


def test_images_as_base64_and_url_reach_anthropic_as_sources(
        client: openai.OpenAI, emu: BackgroundServer) -> None:
    r = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}])
    assert r.choices[0].message.content == ("Hello! You said: what is this (I see 2 images: base64 image/png, "
                                            "url https://example.com/cat.jpg)")
    blocks = sent(emu)["json"]["messages"][0]["content"]
    assert blocks[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    assert blocks[2] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}


def test_unsupported_image_type_is_a_clear_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}]}])
    assert "image/tiff" in str(e.value)


def test_tool_call_round_trip(client: openai.OpenAI, emu: BackgroundServer) -> None:
    first: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Paris"}]
    r = client.chat.completions.create(model="claude", messages=first, tools=TOOLS)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    assert msg.tool_calls and msg.tool_calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(msg.tool_calls[0].function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert sent(emu)["json"]["tools"] == [{
        "name": "get_weather", "description": "weather for a city",
        "input_schema": TOOLS[0]["function"]["parameters"]}]
    follow = [*first, msg.model_dump(exclude_none=True),
              {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": "sunny, 21C"}]
    r2 = client.chat.completions.create(model="claude", messages=follow, tools=TOOLS)  # type: ignore[arg-type]
    assert r2.choices[0].message.content == "The tool returned: sunny, 21C"
    assert r2.choices[0].finish_reason == "stop"
    turn = sent(emu)["json"]["messages"]
    assert turn[1]["content"][-1]["type"] == "tool_use" and turn[1]["content"][-1]["input"] == {"city": "Paris"}
    assert turn[2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": msg.tool_calls[0].id, "content": "sunny, 21C"}]}


def test_consecutive_tool_results_are_merged_into_one_user_turn(client: openai.OpenAI,
                                                                emu: BackgroundServer) -> None:
    calls: list[ChatCompletionMessageToolCallParam] = [
        {"id": f"call_{i}", "type": "function",
         "function": {"name": "get_weather", "arguments": json.dumps({"city": c})}}
        for i, c in enumerate(("Paris", "Rome"))]
    r = client.chat.completions.create(model="claude", tools=TOOLS, messages=[
        {"role": "user", "content": "Paris and Rome"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_0", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_1", "content": "rainy"}])
    assert r.choices[0].message.content == "The tool returned: sunny; rainy"
    msgs = sent(emu)["json"]["messages"]
    assert len(msgs) == 3 and [b["tool_use_id"] for b in msgs[2]["content"]] == ["call_0", "call_1"]


@pytest.mark.parametrize(("choice", "parallel", "expected"), [
    ("required", None, {"type": "any"}),
    ({"type": "function", "function": {"name": "get_weather"}}, None, {"type": "tool", "name": "get_weather"}),
    ("auto", False, {"type": "auto", "disable_parallel_tool_use": True}),
])
def test_tool_choice_is_mapped(client: openai.OpenAI, emu: BackgroundServer, choice: Any, parallel: Any,
                               expected: dict[str, Any]) -> None:
    extra = {} if parallel is None else {"parallel_tool_calls": parallel}
    r = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "Oslo"}],
                                       tools=TOOLS, tool_choice=choice, **extra)
    assert r.choices[0].finish_reason == "tool_calls"
    assert sent(emu)["json"]["tool_choice"] == expected


def test_strict_function_tools_stay_strict(client: openai.OpenAI, emu: BackgroundServer) -> None:
    strict = [{"type": "function", "function": {**TOOLS[0]["function"], "strict": True}}]
    client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "Oslo"}],
                                   tools=strict)  # type: ignore[arg-type]
    assert sent(emu)["json"]["tools"][0]["strict"] is True


def test_tool_choice_none_gets_text(client: openai.OpenAI, emu: BackgroundServer) -> None:
    r = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "Oslo"}],
                                       tools=TOOLS, tool_choice="none")
    assert r.choices[0].message.content == "Hello! You said: Oslo" and not r.choices[0].message.tool_calls
    assert sent(emu)["json"]["tool_choice"] == {"type": "none"}


def test_stream_translates_text_deltas_and_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "hello stream world"}], stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello! You said: hello stream world"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 6  # one chunk per event
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6


def test_stream_without_include_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}],
                                                 stream=True))
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


def test_stream_with_tool_call_deltas(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "Lima"}],
                                                 tools=TOOLS, stream=True))
    deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert all(d.function is not None for d in deltas)
    assert deltas[0].id and deltas[0].id.startswith("toolu_")
    assert deltas[0].function and deltas[0].function.name == "get_weather"
    assert len(deltas) > 2  # the arguments arrive in pieces, as Anthropic sent them
    assert json.loads("".join(d.function.arguments or "" for d in deltas if d.function)) == {"city": "Lima"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "I'll use get_weather."
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_max_tokens_mapping_and_length_finish(client: openai.OpenAI, emu: BackgroundServer) -> None:
    r = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "a b c d e f"}],
                                       max_completion_tokens=2)
    assert r.choices[0].message.content == "Hello! You" and r.choices[0].finish_reason == "length"
    assert sent(emu)["json"]["max_tokens"] == 2
    r = client.chat.completions.create(model="claude-short", messages=[{"role": "user", "content": "a b c"}])
    assert sent(emu)["json"]["max_tokens"] == 3 and r.choices[0].finish_reason == "length"


def test_stop_becomes_stop_sequences(client: openai.OpenAI, emu: BackgroundServer) -> None:
    r = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "one two three"}],
                                       stop="two")
    assert r.choices[0].message.content == "Hello! You said: one " and r.choices[0].finish_reason == "stop"
    assert sent(emu)["json"]["stop_sequences"] == ["two"]


def test_response_format_json_schema_becomes_output_config(
        client: openai.OpenAI, emu: BackgroundServer) -> None:
    schema: dict[str, object] = {"type": "object", "properties": {"answer": {"type": "string"}}}
    r = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}],
                                       response_format={"type": "json_schema",
                                                        "json_schema": {"name": "a", "schema": schema}})
    assert json.loads(r.choices[0].message.content or "") == {"answer": "Hello! You said: hi"}
    assert sent(emu)["json"]["output_config"] == {"format": {"type": "json_schema", "schema": schema}}


def test_n_above_one_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}], n=2)
    assert e.value.body["param"] == "n"  # type: ignore[index]


# ---- anthropic-version per deployment ----------------------------------------------------------------

def test_version_2023_forwards_sampling_params_with_x_api_key(
        client: openai.OpenAI, emu: BackgroundServer) -> None:
    r = client.chat.completions.with_raw_response.create(
        model="claude", messages=[{"role": "user", "content": "x"}], temperature=0.2, top_p=0.9)
    assert "x-relaygate-dropped-params" not in r.headers
    req = sent(emu)
    assert req["json"]["temperature"] == 0.2 and req["json"]["top_p"] == 0.9
    assert req["headers"]["anthropic-version"] == "2023-06-01" and req["headers"]["x-api-key"] == KEY


def test_version_2026_sends_bearer_and_drops_sampling_params(
        client: openai.OpenAI, emu: BackgroundServer) -> None:
    r = client.chat.completions.with_raw_response.create(
        model="claude-2026", messages=[{"role": "user", "content": "x"}], temperature=1.0, top_p=0.5,
        extra_body={"top_k": 5})
    assert r.parse().choices[0].message.content == "Hello! You said: x"
    assert r.headers["x-relaygate-dropped-params"] == "temperature,top_p,top_k"
    req = sent(emu)
    assert not {"temperature", "top_p", "top_k"} & set(req["json"])
    assert req["headers"]["anthropic-version"] == "2026-10-21"
    assert req["headers"]["authorization"] == f"Bearer {KEY}" and "x-api-key" not in req["headers"]


def test_version_2026_stream_also_drops_temperature(client: openai.OpenAI, emu: BackgroundServer) -> None:
    with client.chat.completions.with_streaming_response.create(
            model="claude-2026", messages=[{"role": "user", "content": "x"}], temperature=0.1, stream=True) as r:
        assert r.headers["x-relaygate-dropped-params"] == "temperature"
        assert '"content":"Hello! "' in r.read().decode()
    assert "temperature" not in sent(emu)["json"]


def test_temperature_above_anthropic_range_is_clamped_and_reported(client: openai.OpenAI,
                                                                   emu: BackgroundServer) -> None:
    r = client.chat.completions.with_raw_response.create(
        model="claude", messages=[{"role": "user", "content": "x"}], temperature=1.7)
    assert r.headers["x-relaygate-adjusted-params"] == "temperature"
    assert sent(emu)["json"]["temperature"] == 1.0


def test_unknown_api_version_is_a_config_error() -> None:
    cfg = parse_config({"models": [{"name": "c", "deployments": [
        {"provider": "anthropic", "model": "m", "api_key": "k", "api_version": "2024-01-01"}]}]}, {})
    with pytest.raises(ConfigError) as e:
        asyncio.run(Gateway.create(cfg))
    assert "models[0].deployments[0]" in str(e.value) and "2026-10-21" in str(e.value)
    # the same check runs at start-up of the real server (GatewayThread starts through Gateway.create)


# ---- prompt caching ------------------------------------------------------------------------------------

def test_cache_control_is_forwarded_and_cache_reads_are_reported(client: openai.OpenAI,
                                                                 emu: BackgroundServer) -> None:
    messages: Any = [
        {"role": "system", "content": [{"type": "text", "text": "long shared context " * 3,
                                        "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": "q1"}]
    r1 = client.chat.completions.create(model="claude", messages=messages)
    assert sent(emu)["json"]["system"][0]["cache_control"] == {"type": "ephemeral"}
    r2 = client.chat.completions.create(model="claude", messages=messages)
    assert r1.usage is not None and r2.usage is not None
    assert r2.usage.prompt_tokens_details is not None and r2.usage.prompt_tokens_details.cached_tokens == 9
    assert r2.usage.prompt_tokens == r1.usage.prompt_tokens  # cached tokens are part of the prompt


def test_usage_carries_cache_writes_and_reads(emu: BackgroundServer) -> None:
    """The provider's Usage (what metering sees) splits cache writes from reads."""
    cfg = parse_config({"models": [anthropic_model("c", emu)]}, {})
    body = {"model": "c", "messages": [
        {"role": "system", "content": [{"type": "text", "text": "unique prefix for writes " * 2,
                                        "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": "hi"}]}

    async def run() -> tuple[Any, Any]:
        gw = await Gateway.create(cfg)
        try:
            first = await gw.handle(Call(id="1", route=Route.CHAT, model="c", body=body))
            second = await gw.handle(Call(id="2", route=Route.CHAT, model="c", body=body))
            return first.usage, second.usage
        finally:
            await gw.close()

    first, second = asyncio.run(run())
    assert (first.cache_write_tokens, first.cached_tokens) == (8, 0)
    assert (second.cache_write_tokens, second.cached_tokens) == (0, 8)
    assert first.prompt_tokens == second.prompt_tokens


# ---- errors ---------------------------------------------------------------------------------------------

def test_wrong_upstream_key_is_an_auth_error_without_the_key() -> None:
    with BackgroundServer(create_app(AnthropicEmulatorOptions(api_key="sk-ant-other-key-000000"))) as emu2, \
            GatewayThread({"models": [anthropic_model("c", emu2)]}) as g:
        c = openai.OpenAI(base_url=g.base_url, api_key="client-key", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            c.chat.completions.create(model="c", messages=[{"role": "user", "content": "x"}])
    assert KEY not in str(e.value.body) and e.value.status_code == 401


def test_upstream_text_never_leaks_the_key(client: openai.OpenAI, emu: BackgroundServer) -> None:
    emu.state.faults = FaultPlan(status=400, count=1, message=f"bad request for key {KEY}")
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}])
    assert KEY not in str(e.value) and "[REDACTED]" in str(e.value)


def test_rate_limit_maps_to_429_with_retry_after(client: openai.OpenAI, emu: BackgroundServer) -> None:
    emu.state.faults = FaultPlan(status=429, count=1, retry_after=7)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}])
    assert e.value.response.headers["retry-after"] == "7"


@pytest.mark.parametrize(("status", "kind", "expected"), [
    (529, "overloaded_error", 503), (500, "api_error", 500), (403, "permission_error", 403),
])
def test_upstream_failures_map_to_gateway_errors(client: openai.OpenAI, emu: BackgroundServer, status: int,
                                                 kind: str, expected: int) -> None:
    emu.state.faults = FaultPlan(status=status, count=1, error_code=kind)
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == expected


def test_prompt_too_long_is_context_too_long(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "word " * 500}])
    assert e.value.code == "context_length_exceeded" and "prompt is too long" in str(e.value)


def test_timeout_is_a_504(client: openai.OpenAI, emu: BackgroundServer) -> None:
    emu.state.faults = FaultPlan(latency_ms=1000, count=1)
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="claude-slow", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 504


def test_error_event_before_message_start_is_an_http_error(
        client: openai.OpenAI, emu: BackgroundServer) -> None:
    emu.state.faults = FaultPlan(status=529, count=1, disconnect_after_chunks=0)
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}], stream=True)
    assert e.value.status_code == 503  # not yet streaming: retryable, and reported as a status


def test_error_event_mid_stream_ends_the_stream_with_an_error(
        client: openai.OpenAI, emu: BackgroundServer) -> None:
    emu.state.faults = FaultPlan(status=529, count=1, disconnect_after_chunks=4)
    got: list[str] = []
    with pytest.raises(openai.APIError) as e:
        for c in client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "a b c"}],
                                                stream=True):
            got.append(c.choices[0].delta.content or "")
    assert "".join(got) == "Hello! " and "Overloaded" in str(e.value)


def test_upstream_disconnect_mid_stream_is_reported(gw: GatewayThread, emu: BackgroundServer) -> None:
    emu.state.faults = FaultPlan(count=1, disconnect_after_chunks=5)
    with httpx.Client() as h:
        r = h.post(gw.base_url + "/chat/completions", json={
            "model": "claude", "stream": True, "messages": [{"role": "user", "content": "a b c d"}]})
    assert r.status_code == 200
    assert '"error"' in r.text and "[DONE]" not in r.text


def test_probe_uses_the_free_count_tokens_and_reports_a_bad_key(emu: BackgroundServer) -> None:
    from relaygate.core.errors import AuthError
    from relaygate.gateway import new_client
    from relaygate.providers.anthropic.provider import AnthropicProvider

    async def probe(key: str) -> BaseException | None:
        cfg = parse_config({"models": [anthropic_model("c", emu, api_key=key)]}, {}).models[0].deployments[0]
        client = new_client()
        try:
            await AnthropicProvider(cfg, client).probe(time.monotonic() + 10)
            return None
        except Exception as e:
            return e
        finally:
            await client.close()

    emu.state.requests.clear()
    assert asyncio.run(probe(KEY)) is None
    assert emu.state.requests[-1]["path"] == "/v1/messages/count_tokens"
    assert isinstance(asyncio.run(probe("sk-ant-wrong-key-0000000")), AuthError)


def test_cache_control_on_tool_messages_goes_on_the_tool_result(
        client: openai.OpenAI, emu: BackgroundServer) -> None:
    calls = [{"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]
    # cache_control on a message and on a tool's text part: Anthropic's mark, unknown to the SDK's types
    messages: list[Any] = [
        {"role": "user", "content": "Paris", "cache_control": {"type": "ephemeral"}},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_0",
         "content": [{"type": "text", "text": "sunny", "cache_control": {"type": "ephemeral"}}]}]
    r = client.chat.completions.create(model="claude", tools=TOOLS, messages=messages)
    assert r.choices[0].message.content == "The tool returned: sunny"
    msgs = sent(emu)["json"]["messages"]
    assert msgs[0]["content"][-1]["cache_control"] == {"type": "ephemeral"}  # message-level mark
    result = msgs[2]["content"][0]
    assert result["cache_control"] == {"type": "ephemeral"} and "cache_control" not in result["content"][0]


def test_pdf_and_text_file_parts_become_document_blocks(client: openai.OpenAI, emu: BackgroundServer) -> None:
    pdf = base64.b64encode(b"%PDF-1.4 tiny").decode()
    txt = base64.b64encode(b"plain notes").decode()
    r = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": [
        {"type": "text", "text": "summarize"},
        {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{pdf}", "filename": "a.pdf"}},
        {"type": "file", "file": {"file_data": f"data:text/plain;base64,{txt}"}}]}])
    assert r.choices[0].message.content == ("Hello! You said: summarize "
                                            "(I read 2 documents: application/pdf a.pdf, text/plain)")
    blocks = sent(emu)["json"]["messages"][0]["content"]
    assert blocks[1] == {"type": "document", "title": "a.pdf",
                         "source": {"type": "base64", "media_type": "application/pdf", "data": pdf}}
    assert blocks[2]["source"] == {"type": "text", "media_type": "text/plain", "data": "plain notes"}


def test_file_ids_are_refused_clearly(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": [
            {"type": "file", "file": {"file_id": "file-abc"}}]}])
    assert "file_data" in str(e.value)


def test_openai_prompt_cache_breakpoints_become_cache_control(
        client: openai.OpenAI, emu: BackgroundServer) -> None:
    client.chat.completions.create(model="claude", messages=[{"role": "user", "content": [
        {"type": "text", "text": "stable context", "prompt_cache_breakpoint": {"mode": "explicit"}},
        {"type": "text", "text": "long-lived", "prompt_cache_breakpoint": {"mode": "explicit", "ttl": "12h"}},
        {"type": "text", "text": "question"}]}])
    blocks = sent(emu)["json"]["messages"][0]["content"]
    assert blocks[0]["cache_control"] == {"type": "ephemeral"}
    assert blocks[1]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert "cache_control" not in blocks[2] and "prompt_cache_breakpoint" not in blocks[0]


def test_native_requests_are_metered_from_anthropics_usage(emu: BackgroundServer) -> None:
    """Replies relayed untouched to /v1/messages still carry usage for metering (whole and streamed)."""
    cfg = parse_config({"models": [anthropic_model("c", emu)]}, {})
    native = {"model": "c", "max_tokens": 20, "messages": [{"role": "user", "content": "one two"}]}

    async def run(stream: bool) -> tuple[Any, bytes, bool]:
        gw = await Gateway.create(cfg)
        try:
            call = Call(id="n", route=Route.CHAT, model="c", body={"model": "c", "messages": []}, stream=stream)
            call.anthropic_request = native
            reply = await gw.handle(call)
            raw = reply.body or b"".join([c async for c in reply.stream])  # type: ignore[union-attr]
            return reply.usage, raw, reply.anthropic_native
        finally:
            await gw.close()

    for stream in (False, True):
        usage, raw, native_reply = asyncio.run(run(stream))
        assert native_reply and usage.prompt_tokens == 6 and usage.completion_tokens == 5
        assert (b"event: message_stop" in raw) == stream and b'"type":"message"' in raw  # Anthropic's format


def test_a_native_answer_shaped_otherwise_is_read_whole() -> None:
    """The usage-only decode (providers/native_answers.py) leaves to the whole parse what it cannot type: a
    count given as a float is still counted, a 200 error body is still the upstream's error."""
    answers = [b'{"type": "message", "content": [], "usage": {"input_tokens": 6.0, "output_tokens": 5}}',
               b'{"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}']

    async def messages(_: web.Request) -> web.Response:
        return web.Response(body=answers.pop(0), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    with BackgroundServer(app) as upstream:
        cfg = parse_config({"models": [anthropic_model("c", upstream)]}, {})
        native = {"model": "c", "max_tokens": 20, "messages": [{"role": "user", "content": "one two"}]}

        async def run() -> Any:
            gw = await Gateway.create(cfg)
            try:
                call = Call(id="n", route=Route.CHAT, model="c", body={"model": "c", "messages": []})
                call.anthropic_request = native
                whole = await gw.handle(call)
                call = Call(id="e", route=Route.CHAT, model="c", body={"model": "c", "messages": []})
                call.anthropic_request = native
                with pytest.raises(Unavailable, match="busy"):
                    await gw.handle(call)
                return whole
            finally:
                await gw.close()

        whole = asyncio.run(run())
    assert whole.anthropic_native and whole.usage.prompt_tokens == 6 and whole.usage.completion_tokens == 5


# ---- reasoning ------------------------------------------------------------------------------------------

def test_reasoning_effort_turns_on_adaptive_thinking_on_recent_models(client: openai.OpenAI,
                                                                      emu: BackgroundServer) -> None:
    r = client.chat.completions.with_raw_response.create(
        model="claude", messages=[{"role": "user", "content": "Oslo"}], reasoning_effort="high", temperature=0.2)
    msg: Any = r.parse().choices[0].message
    assert msg.content == "Hello! You said: Oslo"
    assert msg.reasoning_content == "Thinking about: Oslo"
    assert msg.thinking_blocks[0]["type"] == "thinking" and msg.thinking_blocks[0]["signature"]
    body = sent(emu)["json"]
    assert body["thinking"] == {"type": "adaptive"} and body["output_config"] == {"effort": "high"}
    assert "temperature" not in body and r.headers["x-relaygate-dropped-params"] == "temperature"


def test_reasoning_effort_is_a_budget_within_max_tokens_on_older_models(client: openai.OpenAI,
                                                                        emu: BackgroundServer) -> None:
    client.chat.completions.create(model="claude-haiku", messages=[{"role": "user", "content": "x"}],
                                   reasoning_effort="medium", max_completion_tokens=3000)
    assert sent(emu)["json"]["thinking"] == {"type": "enabled", "budget_tokens": 2999}
    r = client.chat.completions.with_raw_response.create(
        model="claude-haiku", messages=[{"role": "user", "content": "x"}], reasoning_effort="low",
        max_completion_tokens=500)
    assert "thinking" not in sent(emu)["json"] and r.headers["x-relaygate-adjusted-params"] == "reasoning_effort"


def test_tool_loop_with_thinking_sends_the_signed_blocks_back(client: openai.OpenAI) -> None:
    first: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Oslo"}]
    r = client.chat.completions.create(model="claude", messages=first, tools=TOOLS,
                                       reasoning_effort="low")
    msg = r.choices[0].message
    assert msg.tool_calls and getattr(msg, "thinking_blocks", None)
    result: ChatCompletionToolMessageParam = {"role": "tool", "tool_call_id": msg.tool_calls[0].id,
                                              "content": "cold"}
    # the assistant turn as the SDK parsed it, thinking_blocks (the gateway's extension) included
    turn: Any = msg.model_dump(exclude_none=True)
    r2 = client.chat.completions.create(model="claude", tools=TOOLS,
                                        messages=[*first, turn, result],
                                        reasoning_effort="low")
    assert r2.choices[0].message.content == "The tool returned: cold"
    bare: Any = msg.model_dump(exclude_none=True, exclude={"thinking_blocks"})
    with pytest.raises(openai.BadRequestError) as e:  # Anthropic insists on the thinking coming back
        client.chat.completions.create(model="claude", tools=TOOLS,
                                       messages=[*first, bare, result], reasoning_effort="low")
    assert "Expected `thinking`" in str(e.value)


def test_streamed_thinking_arrives_as_reasoning_deltas_and_a_signed_block(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "Oslo"}],
                                                 tools=TOOLS, reasoning_effort="low",
                                                 stream=True))
    deltas: list[Any] = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == "Thinking about: Oslo"
    blocks = [b for d in deltas for b in (getattr(d, "thinking_blocks", None) or [])]
    assert len(blocks) == 1 and blocks[0]["thinking"] == "Thinking about: Oslo" and blocks[0]["signature"]
