"""The cohere SDK (ClientV2) → relaygate's /v2/chat and /v2/embed → any configured model (OpenAI, Cohere,
Gemini emulators): translated cells, the Cohere-to-Cohere relay, keys, errors in Cohere's shape."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import cohere
import httpx
import orjson
import pytest
import requests

from relaygate.testing import cohere as cohere_emu
from relaygate.testing import gemini as gemini_emu
from relaygate.testing.base import BackgroundServer, FaultPlan
from relaygate.testing.gateway import GatewayThread
from relaygate.testing.openai import OpenAIEmulatorOptions
from relaygate.testing.openai import create_app as create_openai_app

from .conftest import UPSTREAM_KEY, openai_model

COHERE_KEY = "co-upstream-4b7e9d2a1f6c8e3b5a0d7f2c"
GEMINI_KEY = "AIzaSyGeminiUpstream7d3b9e1c5a2f8d4b6e0c"
MASTER = "rg-master-cohere-0123456789abcdef"
APP_KEY = "rg-cohere-app-5d2b8e1f3a9c7d40b6e2a8f1"
BUDGET_KEY = "rg-cohere-budget-8e3a1f6c9b2d4e7f0a5c"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather for a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, BackgroundServer]]:
    with BackgroundServer(create_openai_app(OpenAIEmulatorOptions(api_key=UPSTREAM_KEY))) as oai, \
            BackgroundServer(cohere_emu.create_app(cohere_emu.CohereEmulatorOptions(api_key=COHERE_KEY))) as co, \
            BackgroundServer(gemini_emu.create_app(gemini_emu.GeminiEmulatorOptions(api_key=GEMINI_KEY))) as gem:
        yield {"openai": oai, "cohere": co, "gemini": gem}


@pytest.fixture(scope="module")
def gw(upstreams: dict[str, BackgroundServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    def co(name: str, model: str) -> dict[str, Any]:
        return {"name": name, "deployments": [{"provider": "cohere", "model": model,
                                               "api_base": upstreams["cohere"].url, "api_key": COHERE_KEY}]}
    config = {"models": [
        openai_model("gpt", upstreams["openai"]),
        openai_model("oai-embed", upstreams["openai"], upstream_model="text-embedding-3-small"),
        co("command", "command-a-03-2025"), co("co-embed", "embed-v4.0"),
        {"name": "gem", "deployments": [{"provider": "gemini", "model": "gemini-2.5-flash",
                                         "api_base": upstreams["gemini"].url, "api_key": GEMINI_KEY}]},
        {"name": "command-fb", "fallbacks": [{"models": ["gpt"]}], "deployments": [{
            "provider": "cohere", "model": "command-a-03-2025", "api_base": upstreams["cohere"].url,
            "api_key": COHERE_KEY}]},
    ], "database": {"url": f"sqlite:///{tmp_path_factory.mktemp('cohere')}/relaygate.db"},
        "auth": {"master_key": MASTER, "keys": [{"id": "cohere-app", "key": APP_KEY,
                                                "models": ["gpt", "command", "gem", "co-embed", "oai-embed"]},
                                               {"id": "cohere-budget", "key": BUDGET_KEY, "budget_usd": 0.0006,
                                                "budget_period": "day"}]}}
    with GatewayThread(config) as g:
        yield g


@pytest.fixture(autouse=True)
def fresh(upstreams: dict[str, BackgroundServer]) -> None:
    for emu in upstreams.values():
        emu.state.faults = None
        emu.state.requests.clear()


@pytest.fixture
def client(gw: GatewayThread) -> cohere.ClientV2:
    return cohere.ClientV2(api_key=APP_KEY, base_url=gw.url, timeout=10)


def say(role: str, text: str) -> Any:
    """A v2 chat message (the SDK types accept plain dicts)."""
    return {"role": role, "content": text}


def sent(upstreams: dict[str, BackgroundServer], kind: str) -> dict[str, Any]:
    return upstreams[kind].state.requests[-1]["json"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("model", ["gpt", "command", "gem"])
def test_chat_answers_in_coheres_shape_with_an_id_of_its_own(
        client: cohere.ClientV2, upstreams: dict[str, BackgroundServer], model: str) -> None:
    r = client.chat(model=model, messages=[say("system", "be nice"), say("user", "hi there")], max_tokens=60,
                    temperature=0.3)
    assert r.message.content is not None and "hi there" in r.message.content[0].text  # type: ignore[union-attr]
    assert r.finish_reason == "COMPLETE"
    assert r.usage is not None and r.usage.tokens is not None and r.usage.tokens.input_tokens
    assert len(r.id) == 36
    if model == "gpt":
        body = sent(upstreams, "openai")
        assert body["messages"][0] == {"role": "system", "content": "be nice"}
        assert body["max_completion_tokens"] == 60 and body["temperature"] == 0.3
    elif model == "command":  # the same dialect: the body went as the client sent it, the model rewritten
        body = sent(upstreams, "cohere")
        assert body["model"] == "command-a-03-2025" and body["max_tokens"] == 60
        assert body["messages"][0] == {"role": "system", "content": "be nice"}


@pytest.mark.parametrize("model", ["gpt", "command", "gem"])
def test_chat_stream_sends_coheres_events_and_ends_with_usage(client: cohere.ClientV2, model: str) -> None:
    events: list[Any] = list(client.chat_stream(model=model, messages=[say("user", "stream this please")]))
    kinds = [e.type for e in events]
    assert kinds[0] == "message-start" and kinds[-1] == "message-end"
    assert "content-start" in kinds and "content-end" in kinds
    text = "".join(e.delta.message.content.text for e in events if e.type == "content-delta")
    assert "stream this please" in text
    end = events[-1]
    assert end.delta.finish_reason == "COMPLETE" and end.delta.usage.tokens.output_tokens


@pytest.mark.parametrize("model", ["gpt", "command", "gem"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_call_round_trip(client: cohere.ClientV2, model: str, stream: bool) -> None:
    messages: list[Any] = [say("user", "weather in Paris?")]
    if stream:
        calls: dict[int, dict[str, Any]] = {}
        stream_events: list[Any] = list(client.chat_stream(model=model, messages=messages, tools=TOOLS))  # type: ignore[arg-type]
        for e in stream_events:
            if e.type == "tool-call-start":
                tc = e.delta.message.tool_calls
                calls[e.index] = {"id": tc.id, "type": "function",
                                  "function": {"name": tc.function.name, "arguments": ""}}
            elif e.type == "tool-call-delta":
                calls[e.index]["function"]["arguments"] += e.delta.message.tool_calls.function.arguments
        assert stream_events[-1].delta.finish_reason == "TOOL_CALL"
        tool_calls = list(calls.values())
    else:
        r = client.chat(model=model, messages=messages, tools=TOOLS)  # type: ignore[arg-type]
        assert r.finish_reason == "TOOL_CALL" and r.message.tool_calls
        tool_calls = [tc.model_dump(exclude_none=True) for tc in r.message.tool_calls]
    [call] = tool_calls
    assert call["function"]["name"] == "get_weather" and "city" in orjson.loads(call["function"]["arguments"])
    messages += [{"role": "assistant", "tool_calls": tool_calls, "tool_plan": "I will check the weather."},
                 {"role": "tool", "tool_call_id": call["id"],
                  "content": [{"type": "document", "document": {"data": '{"temperature": 21}'}}]}]
    r2 = client.chat(model=model, messages=messages, tools=TOOLS)  # type: ignore[arg-type]
    assert r2.message.content and "21" in r2.message.content[0].text  # type: ignore[union-attr]


def test_cohere_options_map_to_chat_fields_and_the_rest_is_named(
        gw: GatewayThread, upstreams: dict[str, BackgroundServer]) -> None:
    r = requests.post(gw.url + "/v2/chat", timeout=10, headers={"authorization": f"Bearer {APP_KEY}"}, json={
        "model": "gpt", "messages": [{"role": "user", "content": "json please"}], "p": 0.5, "k": 3,
        "stop_sequences": ["END"], "seed": 4, "safety_mode": "OFF",
        "response_format": {"type": "json_object", "json_schema": {"type": "object"}},
        "documents": [{"id": "d1", "data": {"text": "Paris is in France"}}]})
    assert r.status_code == 200, r.text
    assert r.headers["x-relaygate-dropped-params"] == "k,safety_mode"
    req = sent(upstreams, "openai")
    assert req["top_p"] == 0.5 and req["stop"] == ["END"] and req["seed"] == 4
    assert req["response_format"] == {"type": "json_schema", "json_schema": {"name": "response",
                                                                             "schema": {"type": "object"}}}
    assert req["messages"][0]["role"] == "system" and "[d1]" in req["messages"][0]["content"]


def test_errors_come_in_coheres_shape(gw: GatewayThread, client: cohere.ClientV2) -> None:
    r = requests.post(gw.url + "/v2/chat", json={"model": "gpt", "messages": []}, timeout=10,
                      headers={"authorization": f"Bearer {APP_KEY}"})
    assert r.status_code == 400 and set(r.json()) == {"id", "message"}
    r = requests.post(gw.url + "/v2/chat", json={"model": "gpt"}, timeout=10,
                      headers={"authorization": "Bearer rg-wrong"})
    assert r.status_code == 401 and "message" in r.json()
    with pytest.raises(cohere.errors.NotFoundError):
        client.chat(model="nope", messages=[say("user", "hi")])


def test_a_failing_cohere_deployment_falls_back_to_another_kind(
        gw: GatewayThread, upstreams: dict[str, BackgroundServer]) -> None:
    requests.post(upstreams["cohere"].url + "/_emulator/faults", json={"status": 503}, timeout=5).raise_for_status()
    resp = requests.post(gw.url + "/v2/chat", timeout=10, headers={"authorization": f"Bearer {MASTER}"},
                         json={"model": "command-fb", "messages": [{"role": "user", "content": "still there?"}]})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-relaygate-deployment"] == "gpt/openai/0"
    assert "still there?" in resp.json()["message"]["content"][0]["text"]


@pytest.mark.parametrize("model", ["co-embed", "oai-embed"])
def test_embed_returns_coheres_embeddings_by_type(
        client: cohere.ClientV2, upstreams: dict[str, BackgroundServer], model: str) -> None:
    r = client.embed(model=model, texts=["one", "two"], input_type="search_query", embedding_types=["float"])
    assert r.embeddings.float_ is not None and len(r.embeddings.float_) == 2 and len(r.embeddings.float_[0]) > 8
    if model == "co-embed":
        assert sent(upstreams, "cohere")["input_type"] == "search_query"
    else:  # an OpenAI-compatible server would refuse a field it does not know
        assert "input_type" not in sent(upstreams, "openai")


def test_a_budget_holds_a_cohere_deployment_to_what_it_can_pay_in_the_clients_own_field(
        gw: GatewayThread, upstreams: dict[str, BackgroundServer]) -> None:
    r = requests.post(gw.url + "/v2/chat", timeout=10, headers={"authorization": f"Bearer {BUDGET_KEY}"},
                      json={"model": "command", "messages": [say("user", "hi")], "max_tokens": 50_000})
    assert r.status_code == 200, r.text
    cap = int(r.headers["x-relaygate-output-cap"])
    assert 0 < cap < 50_000
    assert sent(upstreams, "cohere")["max_tokens"] == cap


def _sdk_events(raw: bytes) -> list[Any]:
    """Cohere v2 stream events as the SDK reads them (its own typed union)."""
    from cohere.core.unchecked_base_model import construct_type
    from cohere.v2.types import V2ChatStreamResponse

    out = []
    for frame in raw.decode().split("\n\n"):
        data = [line[6:] for line in frame.split("\n") if line.startswith("data: ")]
        if data:
            out.append(construct_type(type_=V2ChatStreamResponse, object_=orjson.loads(data[0])))  # type: ignore[arg-type]
    return out


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_translated_stream_sends_the_text_before_a_tool_call_as_its_plan() -> None:
    """With tools offered, what the model says before calling (Anthropic's text block, a chat stream's content)
    is Cohere's tool plan: tool-plan-delta events before tool-call-start, as Cohere streams one."""
    from relaygate.api.cohere.translate import EventWriter

    w = EventWriter(plans=True)
    raw = w.chunk(_chunk({"role": "assistant", "content": "I will "})) + w.chunk(_chunk({"content": "check."}))
    assert b"content-" not in raw  # held: not yet known to be a plan or the answer
    raw += w.chunk(_chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                           "function": {"name": "get_weather", "arguments": ""}}]}))
    raw += w.chunk(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Paris"}'}}]}))
    raw += w.chunk(_chunk({}, "tool_calls")) + w.end(None)
    events = _sdk_events(raw)
    assert [e.type for e in events] == ["message-start", "tool-plan-delta", "tool-plan-delta", "tool-call-start",
                                        "tool-call-delta", "tool-call-end", "message-end"]
    assert "".join(e.delta.message.tool_plan for e in events if e.type == "tool-plan-delta") == "I will check."
    assert events[3].delta.message.tool_calls.function.name == "get_weather"
    assert events[-1].delta.finish_reason == "TOOL_CALL"


def test_translated_stream_with_tools_but_no_call_answers_the_held_text_as_content() -> None:
    from relaygate.api.cohere.translate import EventWriter

    w = EventWriter(plans=True)
    raw = w.chunk(_chunk({"role": "assistant", "content": "It is "})) + w.chunk(_chunk({"content": "sunny."}))
    raw += w.chunk(_chunk({}, "stop")) + w.end(None)
    events = _sdk_events(raw)
    assert [e.type for e in events] == ["message-start", "content-start", "content-delta", "content-delta",
                                        "content-end", "message-end"]
    assert "".join(e.delta.message.content.text for e in events if e.type == "content-delta") == "It is sunny."
    # without tools offered there is no plan: the text streams at once
    assert b"content-delta" in EventWriter().chunk(_chunk({"content": "Hi"}))


def test_a_translated_stream_read_to_its_last_event_leaves_its_connection_pooled(
        gw: GatewayThread, upstreams: dict[str, BackgroundServer]) -> None:
    """Another dialect's reader (Gemini's, built on chat chunks) stops at the ``[DONE]`` chunk made of Cohere's
    ``message-end``, before the translator would read on: the upstream connection, whose body ends a while after
    that event, is pooled once it ends, and the next call goes on it (the same client port). It used to be
    closed."""
    emu = upstreams["cohere"]
    emu.state.faults = FaultPlan(end_delay_ms=200)
    for _ in range(2):
        r = httpx.post(gw.url + "/v1beta/models/command:streamGenerateContent?alt=sse", headers={
            "x-goog-api-key": APP_KEY}, json={"contents": [{"role": "user", "parts": [{"text": "pooled"}]}]},
            timeout=10)
        assert r.status_code == 200 and '"finishReason"' in r.text, r.text
        time.sleep(0.6)  # the left body's end came, and its connection went back to the pool
    first, second = [r["port"] for r in emu.state.requests if r["path"] == "/v2/chat"]
    assert first is not None and first == second
