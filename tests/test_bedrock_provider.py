"""The openai SDK → relaygate → the Bedrock emulator: Converse, ConverseStream, InvokeModel, InvokeAgent.

Every request relaygate sends is SigV4-verified by the emulator, and its JSON is checked against botocore's
service model (the validator and the serializer) as recorded by the emulator.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote

import openai
import pytest

from relaygate.core.errors import AuthError, Unavailable
from relaygate.testing.base import BackgroundServer, FaultPlan
from relaygate.testing.bedrock import (
    PEERS_KEY,
    TEST_ACCESS_KEY,
    BedrockEmulatorOptions,
    create_app,
)
from relaygate.testing.gateway import GatewayThread

from .bedrock_helpers import (
    MODEL_ID,
    REGION,
    assert_botocore_accepts,
    bedrock_deployment,
    botocore_request,
    sent,
)

TOOLS: Any = [{"type": "function", "function": {
    "name": "get_weather", "description": "weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 32).decode()
EMBED_MODEL = "amazon.titan-embed-text-v2:0"
NOVA_MODEL = "amazon.nova-pro-v1:0"  # served through Converse (its InvokeModel body is not a Messages request)


@pytest.fixture(scope="module")
def emu() -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(BedrockEmulatorOptions(region=REGION, context_window=300))) as srv:
        yield srv


@pytest.fixture(scope="module")
def gw(emu: BackgroundServer) -> Iterator[GatewayThread]:
    agent = {**bedrock_deployment(emu), "provider": "bedrock_agent", "model": "agent",
             "agent_id": "AGENT1", "agent_alias_id": "ALIAS1"}
    config = {"models": [
        {"name": "claude", "deployments": [bedrock_deployment(emu)]},
        {"name": "nova", "deployments": [bedrock_deployment(emu, model=NOVA_MODEL)]},
        {"name": "titan-embed", "deployments": [bedrock_deployment(emu, model=EMBED_MODEL)]},
        {"name": "agent", "deployments": [agent]},
        {"name": "wrong-secret", "deployments": [bedrock_deployment(emu, aws_secret_access_key="not-the-secret")]},
    ]}
    with GatewayThread(config) as g:
        yield g


@pytest.fixture(autouse=True)
def clean(emu: BackgroundServer) -> None:
    emu.state.faults = None
    emu.state.requests.clear()


@pytest.fixture
def client(gw: GatewayThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="client-key", max_retries=0)


def check_converse(emu: BackgroundServer, action: str = "converse", model_id: str = MODEL_ID) -> dict[str, Any]:
    """The last Converse request: signed (the emulator verified it) and valid for botocore."""
    rec = sent(emu, action)[-1]
    assert rec["path"] == f"/model/{model_id}/{action}"
    assert rec["headers"]["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={TEST_ACCESS_KEY}/")
    assert_botocore_accepts("bedrock-runtime", "ConverseStream" if action == "converse-stream" else "Converse",
                            rec, modelId=model_id)
    body: dict[str, Any] = rec["json"]
    return body


def test_plain_chat_is_a_signed_converse_call(client: openai.OpenAI, emu: BackgroundServer) -> None:
    r = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hello there"}],
                                       max_tokens=50, temperature=0.2, top_p=0.9)
    assert r.choices[0].message.content == "Hello! You said: hello there"
    assert r.choices[0].finish_reason == "stop" and r.model == "claude"
    assert r.usage is not None and r.usage.prompt_tokens == 6 and r.usage.completion_tokens == 5
    body = check_converse(emu)
    assert body == {"messages": [{"role": "user", "content": [{"text": "hello there"}]}],
                    "inferenceConfig": {"maxTokens": 50, "temperature": 0.2, "topP": 0.9}}


def test_system_prompts_become_system_blocks(client: openai.OpenAI, emu: BackgroundServer) -> None:
    r = client.chat.completions.create(model="claude", messages=[
        {"role": "system", "content": "Be brief."}, {"role": "developer", "content": "No jokes."},
        {"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "Hello! You said: hi [system: Be brief. No jokes.]"
    assert check_converse(emu)["system"] == [{"text": "Be brief."}, {"text": "No jokes."}]


def test_multi_turn_keeps_roles_alternating(client: openai.OpenAI, emu: BackgroundServer) -> None:
    r = client.chat.completions.create(model="claude", messages=[
        {"role": "user", "content": "one"}, {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "two"}, {"role": "user", "content": [{"type": "text", "text": "three"}]}])
    assert r.choices[0].message.content == "Hello! You said: two three [turn 2]"
    assert check_converse(emu)["messages"] == [
        {"role": "user", "content": [{"text": "one"}]},
        {"role": "assistant", "content": [{"text": "first answer"}]},
        {"role": "user", "content": [{"text": "two"}, {"text": "three"}]}]


def test_image_data_uri_is_sent_as_image_bytes(client: openai.OpenAI, emu: BackgroundServer) -> None:
    r = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}])
    assert r.choices[0].message.content == "Hello! You said: what is this (I see 1 image)"
    block = check_converse(emu)["messages"][0]["content"][1]
    assert block == {"image": {"format": "png", "source": {"bytes": PNG}}}


def test_image_url_is_refused_because_bedrock_does_not_fetch(
        client: openai.OpenAI, emu: BackgroundServer) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    assert "data: URI" in e.value.message and e.value.param == "messages[0].content[0]"
    assert not emu.state.requests


def test_tool_call_round_trip(client: openai.OpenAI, emu: BackgroundServer) -> None:
    msgs: list[Any] = [{"role": "user", "content": "Paris"}]
    r = client.chat.completions.create(model="claude", messages=msgs, tools=TOOLS,
                                       tool_choice="required")
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "I will use get_weather."
    assert choice.message.tool_calls
    call: Any = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    first = check_converse(emu)
    assert first["toolConfig"] == {"tools": [{"toolSpec": {
        "name": "get_weather", "description": "weather for a city",
        "inputSchema": {"json": TOOLS[0]["function"]["parameters"]}}}], "toolChoice": {"any": {}}}
    msgs += [choice.message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"}]
    follow = client.chat.completions.create(model="claude", messages=msgs, tools=TOOLS)
    assert follow.choices[0].message.content == "The tool returned: sunny, 21C"
    assert follow.choices[0].finish_reason == "stop"
    second = check_converse(emu)
    assert second["messages"][1]["content"][1] == {"toolUse": {"toolUseId": call.id, "name": "get_weather",
                                                               "input": {"city": "Paris"}}}
    assert second["messages"][2] == {"role": "user", "content": [
        {"toolResult": {"toolUseId": call.id, "content": [{"text": "sunny, 21C"}]}}]}


def test_tool_choice_none_offers_no_tools_unless_the_history_needs_them(client: openai.OpenAI,
                                                                         emu: BackgroundServer) -> None:
    r = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "Rome"}],
                                       tools=TOOLS, tool_choice="none")
    assert r.choices[0].message.content == "Hello! You said: Rome" and "toolConfig" not in check_converse(emu)
    history: Any = [{"role": "user", "content": "Rome"},
                    {"role": "assistant", "content": None, "tool_calls": [
                        {"id": "t1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
                    {"role": "tool", "tool_call_id": "t1", "content": "hot"}]
    r = client.chat.completions.create(model="claude", messages=history, tools=TOOLS, tool_choice="none")
    assert r.choices[0].message.content == "The tool returned: hot"
    assert "toolChoice" not in check_converse(emu)["toolConfig"]


def test_tool_call_ids_from_other_providers_are_made_acceptable_to_bedrock(client: openai.OpenAI,
                                                                            emu: BackgroundServer) -> None:
    history: Any = [{"role": "user", "content": "Rome"}]
    for i, call_id in enumerate(("functions.get_weather:0", "call/with spaces", "x" * 80)):
        history += [{"role": "assistant", "content": None, "tool_calls": [
                        {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
                    {"role": "tool", "tool_call_id": call_id, "content": f"r{i}"},
                    {"role": "assistant", "content": f"answer {i}"}, {"role": "user", "content": "again"}]
    r = client.chat.completions.create(model="claude", messages=history[:-2], tools=TOOLS)
    assert r.choices[0].message.content == "The tool returned: r2"
    messages = check_converse(emu)["messages"]
    uses = [b["toolUse"]["toolUseId"] for m in messages for b in m["content"] if "toolUse" in b]
    results = [b["toolResult"]["toolUseId"] for m in messages for b in m["content"] if "toolResult" in b]
    assert uses == results and uses[0] == "functions.get_weather:0" and uses[1] == "call_with_spaces"
    assert len(uses[2]) == 64 and len(set(uses)) == 3
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="claude", tools=TOOLS, messages=history[:2] + [
            {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": 5}])
    assert e.value.param == "messages[2].content"


def test_stream_translates_event_by_event(client: openai.OpenAI, emu: BackgroundServer) -> None:
    chunks = list(client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi you"}],
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello! You said: hi you"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 6 and chunks[-1].usage.completion_tokens == 5
    assert len({c.id for c in chunks}) == 1
    check_converse(emu, "converse-stream")


def test_stream_without_include_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}],
                                                 stream=True))
    assert all(c.choices and c.usage is None for c in chunks)


def test_stream_tool_call_deltas_assemble(client: openai.OpenAI, emu: BackgroundServer) -> None:
    calls: dict[int, dict[str, str]] = {}
    text, finish = "", None
    for c in client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "Oslo"}],
                                            tools=TOOLS, stream=True,
                                            tool_choice={"type": "function", "function": {"name": "get_weather"}}):
        d = c.choices[0].delta
        text += d.content or ""
        finish = c.choices[0].finish_reason or finish
        for tc in d.tool_calls or []:
            entry = calls.setdefault(tc.index, {"id": "", "name": "", "args": ""})
            entry["id"] += tc.id or ""
            entry["name"] += (tc.function.name or "") if tc.function else ""
            entry["args"] += (tc.function.arguments or "") if tc.function else ""
    assert text == "I will use get_weather." and finish == "tool_calls"
    assert list(calls) == [0] and calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("tooluse_")
    assert json.loads(calls[0]["args"]) == {"city": "Oslo"}
    assert check_converse(emu, "converse-stream")["toolConfig"]["toolChoice"] == {"tool": {"name": "get_weather"}}


def test_max_tokens_and_stop_sequences_map_to_finish_reasons(
        client: openai.OpenAI, emu: BackgroundServer) -> None:
    r = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "a b c d e"}],
                                       max_completion_tokens=3)
    assert r.choices[0].message.content == "Hello! You said:" and r.choices[0].finish_reason == "length"
    r = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "a b STOP c"}],
                                       stop="STOP")
    assert r.choices[0].message.content == "Hello! You said: a b " and r.choices[0].finish_reason == "stop"
    assert check_converse(emu)["inferenceConfig"] == {"stopSequences": ["STOP"]}


def test_cache_control_parts_become_cache_points_and_cached_tokens_are_reported(
        client: openai.OpenAI, emu: BackgroundServer) -> None:
    system = {"role": "system", "content": [{"type": "text", "text": "long shared instructions " * 5,
                                             "cache_control": {"type": "ephemeral"}}]}
    msgs: Any = [system, {"role": "user", "content": "q1"}]
    first = client.chat.completions.create(model="claude", messages=msgs)
    assert check_converse(emu)["system"][1] == {"cachePoint": {"type": "default"}}
    second = client.chat.completions.create(model="claude", messages=msgs)
    assert first.usage is not None and second.usage is not None
    assert second.usage.prompt_tokens_details is not None
    assert second.usage.prompt_tokens_details.cached_tokens == 15
    assert second.usage.prompt_tokens == first.usage.prompt_tokens  # cache reads count as prompt tokens


def test_guardrail_from_config_is_applied_and_its_intervention_is_content_filter(
        emu: BackgroundServer, start_gateway: Callable[..., GatewayThread]) -> None:
    gw = start_gateway({"models": [{"name": "guarded", "deployments": [
        bedrock_deployment(emu, guardrail_id="gr0abc123", guardrail_version="DRAFT")]}]})
    c = openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)
    ok = c.chat.completions.create(model="guarded", messages=[{"role": "user", "content": "fine topic"}])
    assert ok.choices[0].finish_reason == "stop"
    assert check_converse(emu)["guardrailConfig"] == {"guardrailIdentifier": "gr0abc123", "guardrailVersion": "DRAFT"}
    blocked = c.chat.completions.create(model="guarded", messages=[{"role": "user", "content": "a forbidden topic"}])
    assert blocked.choices[0].finish_reason == "content_filter"
    assert blocked.choices[0].message.content == "Sorry, the model cannot answer this question."
    chunks = list(c.chat.completions.create(model="guarded", messages=[{"role": "user", "content": "forbidden"}],
                                            stream=True))
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "content_filter"
    check_converse(emu, "converse-stream")


def test_json_schema_response_format_becomes_output_config(
        client: openai.OpenAI, emu: BackgroundServer) -> None:
    schema: Any = {"type": "object", "properties": {"a": {"type": "string"}}}
    client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}],
                                   response_format={"type": "json_schema",
                                                    "json_schema": {"name": "out", "schema": schema}})
    fmt = check_converse(emu)["outputConfig"]["textFormat"]
    assert fmt["structure"]["jsonSchema"]["name"] == "out"
    assert json.loads(fmt["structure"]["jsonSchema"]["schema"]) == schema


@pytest.mark.parametrize("fault,exc,status,code", [
    (FaultPlan(status=429, count=1), openai.RateLimitError, 429, "rate_limit_exceeded"),
    (FaultPlan(status=400, count=1), openai.BadRequestError, 400, None),
    (FaultPlan(status=400, count=1, message="Input is too long for requested model."), openai.BadRequestError,
     400, "context_length_exceeded"),
    (FaultPlan(status=403, count=1), openai.PermissionDeniedError, 403, "permission_denied"),
    (FaultPlan(status=503, count=1), openai.InternalServerError, 503, "upstream_unavailable"),
    (FaultPlan(status=408, count=1), openai.APIStatusError, 504, "timeout"),
    (FaultPlan(status=429, count=1, error_code="ModelNotReadyException"), openai.InternalServerError, 503,
     "model_not_ready"),
    (FaultPlan(status=500, count=1), openai.InternalServerError, 500, "upstream_unavailable"),
    (FaultPlan(status=424, count=1), openai.APIStatusError, 502, "upstream_unavailable"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_bedrock_errors_map_to_gateway_errors(client: openai.OpenAI, emu: BackgroundServer, fault: FaultPlan,
                                              exc: type[openai.APIStatusError], status: int, code: str | None,
                                              stream: bool) -> None:
    emu.state.faults = FaultPlan(**{**fault.__dict__})
    with pytest.raises(exc) as e:
        r = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}],
                                           stream=stream)
        list(r) if stream else None
    assert e.value.status_code == status and e.value.code == code
    assert e.value.message


def test_error_messages_do_not_reveal_the_aws_account_or_iam_identity(client: openai.OpenAI,
                                                                       emu: BackgroundServer) -> None:
    emu.state.faults = FaultPlan(status=403, count=1, message=(
        "User: arn:aws:iam::123456789012:user/relaygate-prod is not authorized to perform: bedrock:InvokeModel "
        "on resource: arn:aws:bedrock:us-east-1::foundation-model/x because no identity-based policy allows "
        "it (account 123456789012)"))
    with pytest.raises(openai.PermissionDeniedError) as e:
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}])
    text = e.value.response.text
    assert "not authorized to perform: bedrock:InvokeModel" in text
    assert "123456789012" not in text and "relaygate-prod" not in text and "foundation-model" not in text


def test_input_too_long_for_the_model_is_context_length_exceeded(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "word " * 400}])
    assert e.value.code == "context_length_exceeded" and "Input is too long" in e.value.message


def test_wrong_secret_fails_the_signature_and_is_an_auth_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.AuthenticationError) as e:
        client.chat.completions.create(model="wrong-secret", messages=[{"role": "user", "content": "x"}])
    assert e.value.code == "upstream_auth_failed" and "signature" in e.value.message
    assert "not-the-secret" not in e.value.response.text and TEST_ACCESS_KEY not in e.value.response.text


def test_exception_frame_mid_stream_ends_the_stream_with_an_error_event(client: openai.OpenAI,
                                                                         emu: BackgroundServer) -> None:
    emu.state.faults = FaultPlan(status=429, disconnect_after_chunks=3, count=1)
    got: list[str] = []
    with pytest.raises(openai.APIError) as e:
        for c in client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "a b c"}],
                                                stream=True):
            got.append(c.choices[0].delta.content or "")
    assert "".join(got) == "Hello! You "  # messageStart and two text deltas came before the frame
    assert "Too many requests" in e.value.message
    assert isinstance(e.value.body, dict) and e.value.body["code"] == "rate_limit_exceeded"


def test_exception_frame_before_any_event_is_still_an_http_error(client: openai.OpenAI,
                                                                  emu: BackgroundServer) -> None:
    emu.state.faults = FaultPlan(status=503, disconnect_after_chunks=0, count=1)
    with pytest.raises(openai.InternalServerError) as e:
        list(client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}],
                                            stream=True))
    assert e.value.status_code == 503 and "unable to process" in e.value.message


@pytest.mark.parametrize("headers,payload,kind,status", [
    ({":message-type": "exception", ":exception-type": "modelStreamErrorException"},
     b'{"message": "model failed", "originalStatusCode": 500}', "unavailable", 502),
    ({":message-type": "exception", ":exception-type": "validationException"},
     b'{"message": "Input is too long for requested model."}', "context_too_long", 400),
    ({":message-type": "exception", ":exception-type": "throttlingException"}, b"", "rate_limited", 429),
    ({":message-type": "error", ":error-code": "InternalFailure", ":error-message": "boom"}, b"", "unavailable", 500),
])
def test_stream_exception_and_error_frames_map_to_gateway_errors(gw: GatewayThread, headers: dict[str, str],
                                                                 payload: bytes, kind: str, status: int) -> None:
    from relaygate.providers.aws.eventstream import EventMessage

    provider = next(d.provider for d in gw.gateway.deployments() if d.model_name == "claude")
    err = provider.stream_exception(EventMessage(headers, payload))
    assert (err.kind, err.status) == (kind, status) and err.message


def test_stream_cut_mid_message_ends_with_an_error_event(
        client: openai.OpenAI, emu: BackgroundServer) -> None:
    emu.state.faults = FaultPlan(disconnect_after_chunks=2, count=1)
    with pytest.raises(openai.APIError) as e:
        list(client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "a b"}],
                                            stream=True))
    assert "stream" in e.value.message


def test_finished_streams_give_their_connection_back_for_reuse(
        client: openai.OpenAI, emu: BackgroundServer) -> None:
    ports = emu.app[PEERS_KEY]
    for model in ("claude", "claude", "agent", "agent"):
        list(client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], stream=True))
    client.chat.completions.create(model="agent", messages=[{"role": "user", "content": "x"}])
    assert len(set(ports[-5:])) == 1  # one keep-alive connection (one TLS handshake with AWS) served all five


def test_client_disconnect_closes_the_bedrock_stream(gw: GatewayThread, emu: BackgroundServer) -> None:
    emu.state.faults = FaultPlan(chunk_delay_ms=200)
    emu.state.cancelled = 0
    body = json.dumps({"model": "claude", "messages": [{"role": "user", "content": "a b c d e f"}],
                       "stream": True}).encode()
    s = socket.create_connection(("127.0.0.1", gw.port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
              b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert b"200 OK" in s.recv(4096)
    s.close()
    deadline = time.monotonic() + 5
    while (emu.state.cancelled == 0 or emu.state.in_flight) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert emu.state.cancelled == 1 and emu.state.in_flight == 0


def test_unsupported_openai_options_are_refused_clearly(client: openai.OpenAI, emu: BackgroundServer) -> None:
    for kwargs in ({"n": 2}, {"logprobs": True}, {"response_format": {"type": "json_object"}}):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}],
                                           **kwargs)
        assert e.value.code == "unsupported"
    assert not emu.state.requests


# ---- the agent --------------------------------------------------------------------------------------------

def test_agent_answers_with_unknown_usage_in_the_session_asked_for(client: openai.OpenAI,
                                                                    emu: BackgroundServer) -> None:
    for turn in (1, 2):
        raw = client.chat.completions.with_raw_response.create(
            model="agent", messages=[{"role": "user", "content": f"héllo wörld {turn}"}],
            extra_headers={"x-relaygate-session-id": "session-42"})
        r = raw.parse()
        assert r.choices[0].message.content == f"Agent AGENT1 answered: héllo wörld {turn} [session turn {turn}]"
        assert r.usage is None and raw.headers["x-relaygate-usage"] == "unknown"
        assert raw.headers["x-relaygate-session-id"] == "session-42"
    rec = sent(emu, "text")[-1]
    assert rec["path"] == "/agents/AGENT1/agentAliases/ALIAS1/sessions/session-42/text"
    assert_botocore_accepts("bedrock-agent-runtime", "InvokeAgent", rec, agentId="AGENT1",
                            agentAliasId="ALIAS1", sessionId="session-42")


def test_agent_stream_sends_only_the_last_user_message_and_keeps_the_conversation_session(
        client: openai.OpenAI, emu: BackgroundServer) -> None:
    convo: list[Any] = [{"role": "system", "content": "ignored"}, {"role": "user", "content": "first question"}]

    def ask() -> tuple[str, list[Any]]:
        chunks = list(client.chat.completions.create(model="agent", messages=convo, stream=True,
                                                     stream_options={"include_usage": True}))
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks

    text, chunks = ask()
    assert text == "Agent AGENT1 answered: first question [session turn 1]"
    assert chunks[-1].choices == [] and chunks[-1].usage is None
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    second = "second " + "é" * 25  # the emulator's byte-sliced chunks split an "é" in two: rejoined here
    convo += [{"role": "assistant", "content": text}, {"role": "user", "content": second}]
    text, _ = ask()
    assert text == f"Agent AGENT1 answered: {second} [session turn 2]"
    assert sent(emu, "text")[-1]["json"] == {"inputText": second,
                                             "streamingConfigurations": {"streamFinalResponse": True}}
    assert_botocore_accepts("bedrock-agent-runtime", "InvokeAgent", sent(emu, "text")[-1], agentId="AGENT1",
                            agentAliasId="ALIAS1", sessionId=sent(emu, "text")[-1]["path"].split("/")[-2])
    convo[:] = [{"role": "user", "content": "another chat"}]  # a new conversation: a new session
    other, _ = ask()
    assert other.endswith("[session turn 1]")


def test_agent_user_field_names_the_session_and_bad_ids_are_refused(client: openai.OpenAI,
                                                                    emu: BackgroundServer) -> None:
    client.chat.completions.create(model="agent", messages=[{"role": "user", "content": "x"}], user="alice.1")
    assert sent(emu, "text")[-1]["path"].endswith("/sessions/alice.1/text")
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="agent", messages=[{"role": "user", "content": "x"}], user="a b/c")


def test_agent_sessions_are_scoped_to_the_callers_key(emu: BackgroundServer,
                                                      start_gateway: Callable[..., GatewayThread]) -> None:
    import requests

    master = "rg-master-bedrock-test-0123456789"
    agent = {**bedrock_deployment(emu), "provider": "bedrock_agent", "model": "agent", "agent_id": "AGENT1",
             "agent_alias_id": "ALIAS1"}
    gw = start_gateway({"models": [{"name": "agent", "deployments": [agent]}], "auth": {"master_key": master}})
    made = requests.post(gw.url + "/admin/keys", json={"name": "app"}, timeout=10,
                         headers={"authorization": f"Bearer {master}"})
    assert made.status_code == 201, made.text
    paths = []
    for key in (master, made.json()["key"], made.json()["key"]):
        c = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
        raw = c.chat.completions.with_raw_response.create(model="agent", user="shared-name",
                                                          messages=[{"role": "user", "content": "x"}])
        assert raw.headers["x-relaygate-session-id"] == "shared-name"
        paths.append(sent(emu, "text")[-1]["path"])
    assert paths[0] != paths[1] and paths[1] == paths[2]
    assert "shared-name" not in paths[0]
    assert (raw.parse().choices[0].message.content or "").endswith("[session turn 2]")


def test_agent_stream_exception_frame_ends_with_an_error_event(
        client: openai.OpenAI, emu: BackgroundServer) -> None:
    emu.state.faults = FaultPlan(status=503, disconnect_after_chunks=1, count=1, paths=["/agents/"])
    with pytest.raises(openai.APIError) as e:
        list(client.chat.completions.create(model="agent", messages=[{"role": "user", "content": "x"}],
                                            stream=True))
    assert e.value.body["code"] == "upstream_unavailable"  # type: ignore[index]


# ---- embeddings -------------------------------------------------------------------------------------------

def test_embeddings_use_invoke_model_with_titan_bodies(client: openai.OpenAI, emu: BackgroundServer) -> None:
    out = client.embeddings.create(model="titan-embed", input=["alpha beta", "gamma"], dimensions=256)
    assert [d.index for d in out.data] == [0, 1] and len(out.data[0].embedding) == 256
    assert out.usage.prompt_tokens == 3 and out.usage.total_tokens == 3 and out.model == "titan-embed"
    recs = sent(emu, "invoke")
    assert sorted(r["json"]["inputText"] for r in recs) == ["alpha beta", "gamma"]
    for r in recs:
        assert r["json"]["dimensions"] == 256
        body = json.dumps(r["json"]).encode()
        boto = botocore_request("bedrock-runtime", "InvokeModel", {
            "modelId": EMBED_MODEL, "body": body, "contentType": r["headers"]["content-type"],
            "accept": r["headers"]["accept"]})
        assert boto["body"] == body and unquote(boto["url_path"]) == r["path"]
    # the openai SDK asks for base64 by default and decodes it: the same floats come back
    again = client.embeddings.create(model="titan-embed", input="alpha beta", dimensions=256)
    assert again.data[0].embedding == pytest.approx(out.data[0].embedding, rel=1e-6)
    raw = client.embeddings.with_raw_response.create(model="titan-embed", input="gamma", dimensions=256,
                                                     encoding_format="float")
    assert isinstance(json.loads(raw.text)["data"][0]["embedding"], list)


def test_embeddings_refuse_token_arrays_and_non_titan_models(
        client: openai.OpenAI, emu: BackgroundServer) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="titan-embed", input=[[1, 2, 3]])
    assert e.value.param == "input"
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="claude", input="x")
    assert e.value.code == "unsupported"
    assert not emu.state.requests


def test_probe_counts_tokens_and_reports_bad_credentials(gw: GatewayThread, emu: BackgroundServer) -> None:
    deps = {d.model_name: d for d in gw.gateway.deployments()}
    gw.run(deps["claude"].provider.probe(time.monotonic() + 10))
    rec = sent(emu, "count-tokens")[-1]
    assert_botocore_accepts("bedrock-runtime", "CountTokens", rec, modelId=MODEL_ID)
    with pytest.raises(AuthError):
        gw.run(deps["wrong-secret"].provider.probe(time.monotonic() + 10))
    emu.state.faults = FaultPlan(status=503, count=1)
    with pytest.raises(Unavailable):
        gw.run(deps["claude"].provider.probe(time.monotonic() + 10))
    emu.state.faults = FaultPlan(status=400, count=1, message="This model doesn't support counting tokens.")
    gw.run(deps["claude"].provider.probe(time.monotonic() + 10))  # reachable and signed correctly: usable


# ---- other client formats ---------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["claude", "nova"])
def test_anthropic_sdk_through_messages_api_to_bedrock(gw: GatewayThread, emu: BackgroundServer, model: str) -> None:
    """Claude on Bedrock takes the Messages request as its InvokeModel body, as the client wrote it; another
    Bedrock model gets it translated to Converse."""
    import anthropic

    claude = anthropic.Anthropic(api_key="client-key", base_url=gw.url, max_retries=0)
    tools: Any = [{"name": "get_weather", "input_schema": TOOLS[0]["function"]["parameters"]}]
    first = claude.messages.create(model=model, max_tokens=100, tools=tools, tool_choice={"type": "any"},
                                   system="Be brief.", messages=[{"role": "user", "content": "Lima"}])
    assert first.stop_reason == "tool_use"
    use: Any = next(b for b in first.content if b.type == "tool_use")
    assert use.input == {"city": "Lima"}
    if model == "claude":
        rec = sent(emu, "invoke")[-1]
        assert rec["path"] == f"/model/{MODEL_ID}/invoke"
        assert rec["json"] == {"max_tokens": 100, "tools": tools, "tool_choice": {"type": "any"}, "system": "Be brief.",
                               "messages": [{"role": "user", "content": "Lima"}],
                               "anthropic_version": "bedrock-2023-05-31"}
    else:
        sent_first = check_converse(emu, model_id=NOVA_MODEL)
        assert sent_first["system"] == [{"text": "Be brief."}] and sent_first["toolConfig"]["toolChoice"] == {"any": {}}
    msgs: Any = [{"role": "user", "content": "Lima"}, {"role": "assistant", "content": first.content},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "mild"}]}]
    with claude.messages.stream(model=model, max_tokens=100, tools=tools, messages=msgs) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "The tool returned: mild" and final.stop_reason == "end_turn"
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0
    if model == "claude":
        assert sent(emu, "invoke-with-response-stream")[-1]["json"]["messages"][-1]["content"][0]["content"] == "mild"
    else:
        check_converse(emu, "converse-stream", model_id=NOVA_MODEL)


def test_anthropic_cache_control_reaches_bedrock(gw: GatewayThread, emu: BackgroundServer) -> None:
    """Claude on Bedrock gets the cache_control markers as they came; a Converse model gets cachePoint blocks."""
    import anthropic

    claude = anthropic.Anthropic(api_key="client-key", base_url=gw.url, max_retries=0)
    ephemeral: Any = {"type": "ephemeral"}
    tools: Any = [{"name": "get_weather", "input_schema": TOOLS[0]["function"]["parameters"],
                   "cache_control": ephemeral}]
    system: Any = [{"type": "text", "text": "shared instructions " * 10, "cache_control": ephemeral}]
    msgs: Any = [{"role": "user", "content": "Quito"},
                 {"role": "assistant", "content": [{"type": "tool_use", "id": "tooluse_1", "name": "get_weather",
                                                    "input": {"city": "Quito"}}]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tooluse_1", "content": "cool",
                                               "cache_control": ephemeral}]}]
    claude.messages.create(model="claude", max_tokens=50, system=system, tools=tools, messages=msgs)
    invoked = sent(emu, "invoke")[-1]["json"]
    assert invoked["system"] == system and invoked["tools"] == tools and invoked["messages"] == msgs
    first = claude.messages.create(model="nova", max_tokens=50, system=system, tools=tools, messages=msgs)
    body = check_converse(emu, model_id=NOVA_MODEL)
    assert body["system"][-1] == {"cachePoint": {"type": "default"}}
    assert body["toolConfig"]["tools"][-1] == {"cachePoint": {"type": "default"}}
    assert body["messages"][-1]["content"][-1] == {"cachePoint": {"type": "default"}}
    second = claude.messages.create(model="nova", max_tokens=50, system=system, tools=tools, messages=msgs)
    assert first.usage.cache_creation_input_tokens and not first.usage.cache_read_input_tokens
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
