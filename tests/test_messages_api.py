"""The anthropic SDK → relaygate's /v1/messages → any configured model (OpenAI, Gemini, Anthropic emulators)."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from anthropic.types import ToolParam, ToolUseBlock

from relaygate.testing import anthropic as anthropic_emu
from relaygate.testing import gemini as gemini_emu
from relaygate.testing.base import BackgroundServer, FaultPlan
from relaygate.testing.gateway import GatewayThread
from relaygate.testing.openai import OpenAIEmulatorOptions
from relaygate.testing.openai import create_app as create_openai_app

from .conftest import UPSTREAM_KEY, openai_model

GEMINI_KEY = "AIzaSyGeminiUpstreamKey00000000000000000"
CLAUDE_KEY = "sk-ant-upstream-key-000000000000"
TOOLS: list[ToolParam] = [{"name": "get_weather", "description": "weather for a city",
                     "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                                      "required": ["city"]}}]
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, BackgroundServer]]:
    with BackgroundServer(create_openai_app(OpenAIEmulatorOptions(api_key=UPSTREAM_KEY,
                                                                  context_windows={"gpt-4o": 30}))) as oai, \
            BackgroundServer(gemini_emu.create_app(gemini_emu.GeminiEmulatorOptions(api_key=GEMINI_KEY))) as gem, \
            BackgroundServer(anthropic_emu.create_app(
                anthropic_emu.AnthropicEmulatorOptions(api_key=CLAUDE_KEY))) as claude:
        yield {"openai": oai, "gemini": gem, "anthropic": claude}


@pytest.fixture(scope="module")
def gw(upstreams: dict[str, BackgroundServer]) -> Iterator[GatewayThread]:
    config = {"models": [
        openai_model("gpt", upstreams["openai"]),
        openai_model("gpt-small", upstreams["openai"], upstream_model="gpt-4o"),
        {"name": "gem", "deployments": [{"provider": "gemini", "model": "gemini-2.5-flash",
                                         "api_base": upstreams["gemini"].url, "api_key": GEMINI_KEY}]},
        {"name": "claude", "deployments": [{"provider": "anthropic", "model": "claude-haiku-4-5",
                                            "api_base": upstreams["anthropic"].url, "api_key": CLAUDE_KEY}]},
        {"name": "claude-2026", "deployments": [{"provider": "anthropic", "model": "claude-haiku-4-5",
                                                 "api_base": upstreams["anthropic"].url, "api_key": CLAUDE_KEY,
                                                 "api_version": "2026-10-21"}]},
        {"name": "claude-fb", "fallbacks": [{"models": ["gpt"]}],
         "deployments": [{"provider": "anthropic", "model": "claude-haiku-4-5",
                          "api_base": upstreams["anthropic"].url, "api_key": CLAUDE_KEY}]},
    ]}
    with GatewayThread(config) as g:
        yield g


@pytest.fixture
def client(gw: GatewayThread, upstreams: dict[str, BackgroundServer]) -> anthropic.Anthropic:
    for emu in upstreams.values():
        emu.state.faults = None
        emu.state.requests.clear()
    return anthropic.Anthropic(api_key="client-key", base_url=gw.url, max_retries=0)


def openai_sent(upstreams: dict[str, BackgroundServer]) -> dict[str, Any]:
    return upstreams["openai"].state.requests[-1]["json"]  # type: ignore[no-any-return]


def test_create_against_an_openai_model(
        client: anthropic.Anthropic, upstreams: dict[str, BackgroundServer]) -> None:
    m = client.messages.with_raw_response.create(model="gpt", max_tokens=200, system="be nice",
                                                 messages=[{"role": "user", "content": "hi there"}])
    msg = m.parse()
    assert msg.content[0].type == "text" and msg.content[0].text == "Hello! You said: hi there [system: be nice]"
    assert msg.stop_reason == "end_turn" and msg.model == "gpt-4o-mini" and msg.id.startswith("msg_")
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens == 8
    assert m.headers["request-id"] == m.headers["x-request-id"] and msg._request_id == m.headers["request-id"]
    sent = openai_sent(upstreams)
    assert sent["messages"] == [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi there"}]
    assert sent["max_completion_tokens"] == 200 and sent["model"] == "gpt-4o-mini"


def test_stream_against_an_openai_model(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model="gpt", max_tokens=200, messages=[{"role": "user", "content": "a b c"}]) as s:
        pieces = list(s.text_stream)
        final = s.get_final_message()
    assert "".join(pieces) == "Hello! You said: a b c" and len(pieces) == 6  # one event per upstream chunk
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens > 0 and final.usage.output_tokens == 6


def test_stream_event_sequence_is_anthropics(gw: GatewayThread) -> None:
    with httpx.Client() as h:
        r = h.post(gw.url + "/v1/messages", headers={"anthropic-version": "2023-06-01", "x-api-key": "k"},
                   json={"model": "gpt", "max_tokens": 50, "stream": True,
                         "messages": [{"role": "user", "content": "x y"}]})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    names = [e.split("\n")[0].removeprefix("event: ") for e in events]
    datas = [orjson.loads(e.split("\n")[1].removeprefix("data: ")) for e in events]
    assert names[0] == "message_start" and names[1] == "content_block_start"
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(d["type"] == n for n, d in zip(names, datas, strict=True))
    assert datas[-2]["delta"]["stop_reason"] == "end_turn" and datas[-2]["usage"]["output_tokens"] == 5


def test_tool_round_trip_against_an_openai_model(client: anthropic.Anthropic,
                                                 upstreams: dict[str, BackgroundServer]) -> None:
    first = client.messages.create(model="gpt", max_tokens=200, tools=TOOLS, tool_choice={"type": "any"},
                                   messages=[{"role": "user", "content": "Paris"}])
    use = first.content[0]
    assert isinstance(use, ToolUseBlock)
    assert first.stop_reason == "tool_use" and use.type == "tool_use" and use.input == {"city": "Paris"}
    sent = openai_sent(upstreams)
    assert sent["tool_choice"] == "required" and "strict" not in sent["tools"][0]["function"]
    assert sent["tools"][0]["function"]["parameters"] == TOOLS[0]["input_schema"]
    second = client.messages.create(model="gpt", max_tokens=200, tools=TOOLS, messages=[
        {"role": "user", "content": "Paris"}, {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}])
    assert second.content[0].text == "The tool returned: sunny"  # type: ignore[union-attr]
    sent = openai_sent(upstreams)
    assert sent["messages"][1]["tool_calls"][0]["id"] == use.id
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": use.id, "content": "sunny"}


def test_strict_tools_reach_openai_as_strict_functions(client: anthropic.Anthropic,
                                                       upstreams: dict[str, BackgroundServer]) -> None:
    strict: ToolParam = {**TOOLS[0], "strict": True}
    client.messages.create(model="gpt", max_tokens=50, tools=[strict],
                           messages=[{"role": "user", "content": "Rome"}])
    assert openai_sent(upstreams)["tools"][0]["function"]["strict"] is True


def test_stream_with_tool_use_against_an_openai_model(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model="gpt", max_tokens=200, tools=TOOLS,
                                messages=[{"role": "user", "content": "Rome"}]) as s:
        kinds = [e.type for e in s]
        final = s.get_final_message()
    assert kinds.count("input_json") >= 2  # the arguments came in pieces
    assert final.stop_reason == "tool_use" and final.content[0].input == {"city": "Rome"}  # type: ignore[union-attr]


def test_images_and_tool_errors_reach_an_openai_model(client: anthropic.Anthropic,
                                                      upstreams: dict[str, BackgroundServer]) -> None:
    m = client.messages.create(model="gpt", max_tokens=200, messages=[{"role": "user", "content": [
        {"type": "text", "text": "look"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}])
    assert m.content[0].text == "Hello! You said: look (I see 2 images)"  # type: ignore[union-attr]
    parts = openai_sent(upstreams)["messages"][0]["content"]
    assert parts[1] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    assert parts[2] == {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}


def test_max_tokens_and_stop_sequences_map_to_stop_reasons(client: anthropic.Anthropic,
                                                           upstreams: dict[str, BackgroundServer]) -> None:
    m = client.messages.create(model="gpt", max_tokens=2, messages=[{"role": "user", "content": "a b c"}])
    assert m.stop_reason == "max_tokens" and m.content[0].text == "Hello! You"  # type: ignore[union-attr]
    m = client.messages.create(model="gpt", max_tokens=50, stop_sequences=["said"],
                               messages=[{"role": "user", "content": "a"}])
    assert m.content[0].text == "Hello! You " and openai_sent(upstreams)["stop"] == ["said"]  # type: ignore[union-attr]


def test_both_versions_and_both_auth_headers_are_accepted(gw: GatewayThread,
                                                          upstreams: dict[str, BackgroundServer]) -> None:
    body = {"model": "gpt", "max_tokens": 20, "temperature": 0.5, "messages": [{"role": "user", "content": "x"}]}
    with httpx.Client() as h:
        legacy = h.post(gw.url + "/v1/messages", json=body,
                        headers={"anthropic-version": "2023-06-01", "x-api-key": "client-key"})
        current = h.post(gw.url + "/v1/messages", json=body,
                         headers={"anthropic-version": "2026-10-21", "authorization": "Bearer client-key"})
    assert legacy.status_code == 200 and current.status_code == 200
    assert current.json()["content"][0]["text"] == "Hello! You said: x"
    assert openai_sent(upstreams)["temperature"] == 0.5  # the model takes it; only Anthropic's API refuses it


def test_fields_without_openai_counterpart_are_dropped_and_named(client: anthropic.Anthropic,
                                                                 upstreams: dict[str, BackgroundServer]) -> None:
    r = client.messages.with_raw_response.create(model="gpt", max_tokens=20, messages=[
        {"role": "user", "content": "x"}], extra_body={"top_k": 3}, thinking={"type": "disabled"})
    assert r.headers["x-relaygate-dropped-params"] == "top_k,thinking"
    assert "top_k" not in openai_sent(upstreams) and "thinking" not in openai_sent(upstreams)


# ---- errors in Anthropic's shape -----------------------------------------------------------------------

def test_unknown_model_is_a_not_found_error(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert e.value.request_id and e.value.request_id.startswith("req_")


def test_missing_max_tokens_and_bad_json_are_invalid_request_errors(gw: GatewayThread) -> None:
    with httpx.Client() as h:
        missing = h.post(gw.url + "/v1/messages", json={"model": "gpt", "messages": [{"role": "user", "content": "x"}]})
        broken = h.post(gw.url + "/v1/messages", content=b"{not json", headers={"content-type": "application/json"})
    for r in (missing, broken):
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text
    assert r.json()["type"] == "error" and missing.json()["error"]["message"] == "max_tokens: Field required"


def test_upstream_rate_limit_is_a_rate_limit_error(client: anthropic.Anthropic,
                                                   upstreams: dict[str, BackgroundServer]) -> None:
    upstreams["openai"].state.faults = FaultPlan(status=429, count=1, retry_after=4)
    with pytest.raises(anthropic.RateLimitError) as e:
        client.messages.create(model="gpt", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert e.value.response.headers["retry-after"] == "4"
    assert e.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


def test_overloaded_anthropic_upstream_is_an_overloaded_error(client: anthropic.Anthropic,
                                                              upstreams: dict[str, BackgroundServer]) -> None:
    upstreams["anthropic"].state.faults = FaultPlan(status=529, count=1)
    with pytest.raises(anthropic.InternalServerError) as e:
        client.messages.create(model="claude", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 503 and e.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


def test_failure_mid_stream_ends_with_an_error_event(client: anthropic.Anthropic,
                                                     upstreams: dict[str, BackgroundServer]) -> None:
    upstreams["anthropic"].state.faults = FaultPlan(status=529, count=1, disconnect_after_chunks=4)
    got: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as e:
        with client.messages.stream(model="claude", max_tokens=50,
                                    messages=[{"role": "user", "content": "a b c"}]) as s:
            got.extend(s.text_stream)
    assert got == ["Hello! "] and "overloaded_error" in str(e.value)


# ---- other providers behind /v1/messages -----------------------------------------------------------------

def test_anthropic_sdk_to_a_gemini_model(
        client: anthropic.Anthropic, upstreams: dict[str, BackgroundServer]) -> None:
    m = client.messages.create(model="gem", max_tokens=100, system="be brief",
                               messages=[{"role": "user", "content": "hola"}])
    assert m.content[0].text.startswith("Hello! You said: hola")  # type: ignore[union-attr]
    assert m.stop_reason == "end_turn" and m.usage.output_tokens > 0
    with client.messages.stream(model="gem", max_tokens=100, tools=TOOLS,
                                messages=[{"role": "user", "content": "Lima"}]) as s:
        final = s.get_final_message()
    use = final.content[-1]
    assert final.stop_reason == "tool_use" and use.type == "tool_use" and use.input == {"city": "Lima"}
    assert upstreams["gemini"].state.requests[-1]["path"].endswith(":streamGenerateContent")


def test_anthropic_sdk_to_an_anthropic_model_round_trips(client: anthropic.Anthropic,
                                                         upstreams: dict[str, BackgroundServer]) -> None:
    with client.messages.stream(model="claude", max_tokens=100, tools=TOOLS,
                                messages=[{"role": "user", "content": "Oslo"}]) as s:
        final = s.get_final_message()
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.id.startswith("msg_") and not final.id.startswith("msg_msg_")
    assert final.content[0].text == "I'll use get_weather."  # type: ignore[union-attr]
    assert final.content[1].input == {"city": "Oslo"}  # type: ignore[union-attr]
    sent = upstreams["anthropic"].state.requests[-1]
    assert sent["headers"]["x-api-key"] == CLAUDE_KEY and sent["json"]["max_tokens"] == 100


def test_client_disconnect_mid_stream_cancels_the_anthropic_upstream(gw: GatewayThread,
                                                                    upstreams: dict[str, BackgroundServer]) -> None:
    """Both translations (Anthropic → OpenAI chunks → Anthropic events) pass the disconnect on at once."""
    emu = upstreams["anthropic"]
    emu.state.faults = FaultPlan(chunk_delay_ms=200)
    emu.state.cancelled = 0
    body = orjson.dumps({"model": "claude", "max_tokens": 50, "stream": True,
                         "messages": [{"role": "user", "content": "a b c d e f g h"}]})
    s = socket.create_connection(("127.0.0.1", gw.port))
    s.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
              b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert b"200 OK" in s.recv(4096)
    s.close()
    deadline = time.monotonic() + 3
    while emu.state.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert emu.state.cancelled == 1 and emu.state.in_flight == 0


def test_prompt_caching_works_through_to_an_anthropic_model(client: anthropic.Anthropic,
                                                            upstreams: dict[str, BackgroundServer]) -> None:
    system: Any = [{"type": "text", "text": "a long and stable system prompt for caching",
                    "cache_control": {"type": "ephemeral"}}]
    first = client.messages.create(model="claude", max_tokens=50, system=system, tools=TOOLS,
                                   messages=[{"role": "user", "content": "Oslo"}])
    use = first.content[-1]
    assert use.type == "tool_use"
    turn: Any = [{"role": "user", "content": "Oslo"}, {"role": "assistant", "content": first.content},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "cold",
                                               "cache_control": {"type": "ephemeral"}}]}]
    second = client.messages.create(model="claude", max_tokens=50, system=system, tools=TOOLS, messages=turn)
    assert second.content[0].text.startswith("The tool returned: cold")  # type: ignore[union-attr]
    assert second.usage.cache_read_input_tokens == 18  # tools + system, written by the first call
    assert (second.usage.cache_creation_input_tokens or 0) > 0  # and the new breakpoint on the tool result
    sent = upstreams["anthropic"].state.requests[-1]["json"]
    assert sent["system"] == system
    assert sent["messages"][2]["content"][0]["cache_control"] == {"type": "ephemeral"}


def test_cache_control_is_not_sent_to_openai_models(client: anthropic.Anthropic,
                                                    upstreams: dict[str, BackgroundServer]) -> None:
    system: Any = [{"type": "text", "text": "stable", "cache_control": {"type": "ephemeral"}}]
    client.messages.create(model="gpt", max_tokens=50, system=system, messages=[{"role": "user", "content": "x"}])
    assert b"cache_control" not in orjson.dumps(openai_sent(upstreams))


def test_count_tokens_is_served_by_anthropic_models_only(client: anthropic.Anthropic,
                                                         upstreams: dict[str, BackgroundServer]) -> None:
    r = client.messages.count_tokens(model="claude", system="be brief", tools=TOOLS,
                                     messages=[{"role": "user", "content": "a b c"}])
    assert r.input_tokens == 19  # 2 system words + 10 for the tool + 3 words and 4 for the message
    sent = upstreams["anthropic"].state.requests[-1]
    assert sent["path"] == "/v1/messages/count_tokens" and "max_tokens" not in sent["json"]
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.count_tokens(model="gpt", messages=[{"role": "user", "content": "a"}])
    assert "does not count tokens" in str(e.value)


def test_pdf_documents_reach_openai_as_file_parts_and_claude_as_documents(
        client: anthropic.Anthropic, upstreams: dict[str, BackgroundServer]) -> None:
    pdf = base64.b64encode(b"%PDF-1.4 tiny").decode()
    content: Any = [{"type": "document", "title": "a.pdf",
                     "source": {"type": "base64", "media_type": "application/pdf", "data": pdf}},
                    {"type": "text", "text": "summarize"}]
    client.messages.create(model="gpt", max_tokens=50, messages=[{"role": "user", "content": content}])
    assert openai_sent(upstreams)["messages"][0]["content"][0] == {
        "type": "file", "file": {"file_data": f"data:application/pdf;base64,{pdf}", "filename": "a.pdf"}}
    m = client.messages.create(model="claude", max_tokens=50, messages=[{"role": "user", "content": content}])
    assert m.content[0].text.endswith("(I read 1 document: application/pdf a.pdf)")  # type: ignore[union-attr]


# ---- native pass-through to Anthropic deployments ------------------------------------------------------

def test_anthropic_deployments_get_the_clients_own_request(gw: GatewayThread,
                                                           upstreams: dict[str, BackgroundServer]) -> None:
    body = {"model": "claude", "max_tokens": 30, "top_k": 4, "thinking": {"type": "disabled"},
            "messages": [{"role": "user", "content": "hi"},
                         {"role": "assistant", "content": [{"type": "text", "text": "ok",
                                                            "cache_control": {"type": "ephemeral"}}]},
                         {"role": "user", "content": "again"}]}
    with httpx.Client() as h:
        r = h.post(gw.url + "/v1/messages", json=body, headers={"anthropic-version": "2023-06-01",
                                                                "x-api-key": "k", "anthropic-beta": "feature-x"})
    assert r.status_code == 200 and "x-relaygate-dropped-params" not in r.headers
    answer = r.json()
    assert answer["usage"]["cache_creation"] is not None and answer["usage"]["service_tier"] == "standard"
    sent = upstreams["anthropic"].state.requests[-1]
    assert sent["json"] == {**body, "model": "claude-haiku-4-5"}  # nothing lost on the way
    assert sent["headers"]["anthropic-beta"] == "feature-x" and sent["headers"]["x-api-key"] == CLAUDE_KEY


def test_native_stream_relays_anthropics_events_untouched(gw: GatewayThread) -> None:
    with httpx.Client() as h:
        r = h.post(gw.url + "/v1/messages", headers={"x-api-key": "k"}, json={
            "model": "claude", "max_tokens": 30, "stream": True, "messages": [{"role": "user", "content": "a"}]})
    names = [e.split("\n")[0].removeprefix("event: ") for e in r.text.split("\n\n") if e]
    assert names[:2] == ["message_start", "ping"] and names[-1] == "message_stop"  # pings are Anthropic's


def test_native_requests_still_follow_the_deployments_version(client: anthropic.Anthropic,
                                                              upstreams: dict[str, BackgroundServer]) -> None:
    r = client.messages.with_raw_response.create(model="claude-2026", max_tokens=20,
                                                 messages=[{"role": "user", "content": "x"}],
                                                 extra_body={"temperature": 0.3, "top_k": 2})
    assert r.parse().content[0].text == "Hello! You said: x"  # type: ignore[union-attr]
    assert r.headers["x-relaygate-dropped-params"] == "temperature,top_k"
    sent = upstreams["anthropic"].state.requests[-1]
    assert "temperature" not in sent["json"] and sent["headers"]["authorization"] == f"Bearer {CLAUDE_KEY}"


def test_fallback_from_claude_to_an_openai_model_is_translated(client: anthropic.Anthropic,
                                                               upstreams: dict[str, BackgroundServer]) -> None:
    upstreams["anthropic"].state.faults = FaultPlan(status=529, count=1)
    r = client.messages.with_raw_response.create(model="claude-fb", max_tokens=20,
                                                 messages=[{"role": "user", "content": "x"}])
    m = r.parse()
    assert m.content[0].text == "Hello! You said: x" and m.model == "gpt-4o-mini"  # type: ignore[union-attr]
    assert r.headers["x-relaygate-deployment"].startswith("gpt")


def test_reasoning_text_from_openai_style_upstreams_becomes_a_thinking_block() -> None:
    """vLLM/DeepSeek-style ``reasoning_content`` reaches Anthropic clients as thinking, whole and streamed."""
    import asyncio

    from relaygate.api.anthropic.translate import EventWriter, to_anthropic_message, translate_stream

    whole = to_anthropic_message({"id": "chatcmpl-1", "model": "r1", "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": "4", "reasoning_content": "2+2"}}]},
                                 None, "r1")
    assert [b["type"] for b in whole["content"]] == ["thinking", "text"] and whole["content"][0]["thinking"] == "2+2"

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return b"data: " + orjson.dumps({"id": "chatcmpl-1", "model": "r1", "choices": [
            {"index": 0, "delta": delta, "finish_reason": finish}]}) + b"\n\n"

    async def run() -> list[dict[str, Any]]:
        async def upstream() -> Any:
            for part in (chunk({"role": "assistant", "reasoning_content": "2+"}), chunk({"reasoning_content": "2"}),
                         chunk({"content": "4"}), chunk({}, "stop"), b"data: [DONE]\n\n"):
                yield part
        raw = b"".join([e async for e in translate_stream(upstream(), EventWriter("r1"), lambda: None)])
        return [orjson.loads(e.split(b"\n")[1][6:]) for e in raw.split(b"\n\n") if e]

    events = asyncio.run(run())
    starts = [e["content_block"]["type"] for e in events if e["type"] == "content_block_start"]
    thinking = "".join(e["delta"].get("thinking", "") for e in events if e["type"] == "content_block_delta")
    assert starts == ["thinking", "text"] and thinking == "2+2" and events[-1]["type"] == "message_stop"


def test_anthropic_clients_discover_models_in_anthropics_shape(
        client: anthropic.Anthropic, gw: GatewayThread) -> None:
    names = [m.id for m in client.models.list(limit=2)]  # the SDK pages through with after_id
    assert names == ["gpt", "gpt-small", "gem", "claude", "claude-2026", "claude-fb"]
    first = client.models.list(limit=2)
    assert first.has_more is True and first.last_id == "gpt-small"
    back = client.models.list(limit=2, before_id="claude-2026")
    assert [m.id for m in back.data] == ["gem", "claude"] and back.has_more is True
    one = client.models.retrieve("claude")
    assert one.type == "model" and one.display_name == "claude" and one.lifecycle == "active"
    with httpx.Client() as h:  # OpenAI clients (no anthropic-version) keep OpenAI's shape
        assert h.get(gw.base_url + "/models").json()["object"] == "list"


def test_beta_namespace_and_server_tools_on_a_translated_model(client: anthropic.Anthropic,
                                                                upstreams: dict[str, BackgroundServer]) -> None:
    """The SDK's beta namespace (/v1/messages?beta=true, as Claude Code calls it) works; server tools, which
    only Anthropic runs, are left out for other models and named, instead of failing the request."""
    r = client.beta.messages.with_raw_response.create(
        model="gpt", max_tokens=50, messages=[{"role": "user", "content": "Rome"}],
        tools=[TOOLS[0], {"type": "web_search_20250305", "name": "web_search"}])
    assert r.parse().content[0].type == "tool_use"
    assert r.headers["x-relaygate-dropped-params"] == "tools.web_search"
    assert [t["function"]["name"] for t in openai_sent(upstreams)["tools"]] == ["get_weather"]


def test_context_overflow_on_any_model_reads_like_anthropics(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model="gpt-small", max_tokens=5,
                               messages=[{"role": "user", "content": "word " * 40}])
    message = e.value.body["error"]["message"]  # type: ignore[index]
    assert message.startswith("prompt is too long: ") and "maximum context length" in message


def test_tool_result_images_and_errors_reach_an_openai_model(client: anthropic.Anthropic,
                                                             upstreams: dict[str, BackgroundServer]) -> None:
    first = client.messages.create(model="gpt", max_tokens=50, tools=TOOLS,
                                   messages=[{"role": "user", "content": "Rome"}])
    use = first.content[0]
    assert isinstance(use, ToolUseBlock)
    result: Any = {"type": "tool_result", "tool_use_id": use.id, "is_error": True, "content": [
        {"type": "text", "text": "camera offline"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]}
    client.messages.create(model="gpt", max_tokens=50, tools=TOOLS, messages=[
        {"role": "user", "content": "Rome"}, {"role": "assistant", "content": first.content},
        {"role": "user", "content": [result]}])
    sent = openai_sent(upstreams)["messages"]
    assert sent[2] == {"role": "tool", "tool_call_id": use.id, "content": "Error: camera offline"}
    assert sent[3]["role"] == "user" and sent[3]["content"][0]["type"] == "image_url"


def test_unknown_model_lookup_is_anthropic_shaped_for_anthropic_clients(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as e:
        client.models.retrieve("nope")
    assert e.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_translated_stream_that_breaks_ends_with_an_anthropic_error_event(
        client: anthropic.Anthropic, upstreams: dict[str, BackgroundServer]) -> None:
    upstreams["openai"].state.faults = FaultPlan(count=1, disconnect_after_chunks=3)
    got: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as e:
        with client.messages.stream(model="gpt", max_tokens=50,
                                    messages=[{"role": "user", "content": "a b c d"}]) as s:
            got.extend(s.text_stream)
    assert "".join(got) == "Hello! You " and e.value.body["error"]["type"] == "api_error"  # type: ignore[index]
