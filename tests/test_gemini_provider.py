"""The Gemini adapter end to end: the openai SDK → relaygate → the Gemini emulator (chat, streams, errors)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest
import requests
from openai.types.chat import (
    ChatCompletionMessageParam,
    ChatCompletionMessageToolCallParam,
    ChatCompletionToolParam,
)

from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import GatewayThread
from tests.openai_types import delta_function, function_calls

from .gemini_helpers import (
    GEMINI_FIXTURES,
    KEY,
    fault,
    gemini_model,
    recorded,
    run_gateway,
    vertex_deployment,
)

PIXEL = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
WEATHER: ChatCompletionToolParam = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}

emulator, _reset, client = GEMINI_FIXTURES


@pytest.fixture(scope="module")
def gateway(emulator: BackgroundServer) -> Iterator[GatewayThread]:
    yield from run_gateway([
        gemini_model("gem", "gemini-2.5-flash", emulator),
        gemini_model("gem3", "gemini-3-pro-preview", emulator),
        gemini_model("gem-small", "gemini-2.0-flash", emulator),
        gemini_model("gem-slow", "gemini-2.5-flash", emulator, timeout=0.3),
        gemini_model("gem-badkey", "gemini-2.5-flash", emulator, api_key="AIzaSyWrongKey0000000000000000000000000"),
        {"name": "vert-badtoken", "deployments": [vertex_deployment(emulator, api_key="ya29.expired")]},
    ])


# ---- chat --------------------------------------------------------------------------------------------

def test_plain_chat_is_translated_and_the_key_travels_in_a_header(client: openai.OpenAI,
                                                                  emulator: BackgroundServer) -> None:
    r = client.chat.completions.create(model="gem", messages=[{"role": "user", "content": "hi there"}])
    assert r.choices[0].message.content == "Hello! You said: hi there"
    assert r.choices[0].finish_reason == "stop"
    assert r.model == "gemini-2.5-flash" and r.id.startswith("chatcmpl-") and len(r.id) > 20  # Gemini's responseId
    assert r.usage is not None and r.usage.prompt_tokens == 6 and r.usage.completion_tokens == 5
    assert r.usage.prompt_tokens_details is not None and r.usage.prompt_tokens_details.cached_tokens == 3
    req = recorded(emulator)[-1]
    assert req["path"] == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert req["headers"]["x-goog-api-key"] == KEY
    assert "key" not in req["query"]
    assert req["json"] == {"contents": [{"role": "user", "parts": [{"text": "hi there"}]}]}


def test_system_and_developer_messages_become_the_system_instruction(client: openai.OpenAI,
                                                                      emulator: BackgroundServer) -> None:
    r = client.chat.completions.create(model="gem", messages=[
        {"role": "system", "content": "be brief"}, {"role": "developer", "content": "be kind"},
        {"role": "user", "content": "hello"}])
    assert r.choices[0].message.content == "Hello! You said: hello [system: be brief be kind]"
    assert recorded(emulator)[-1]["json"]["systemInstruction"] == {"parts": [{"text": "be brief"},
                                                                             {"text": "be kind"}]}


def test_assistant_turns_are_sent_with_the_model_role(
        client: openai.OpenAI, emulator: BackgroundServer) -> None:
    r = client.chat.completions.create(model="gem", messages=[
        {"role": "user", "content": "one"}, {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": [{"type": "text", "text": "two"}]}])
    assert r.choices[0].message.content == "Hello! You said: two [turn 2]"
    assert [c["role"] for c in recorded(emulator)[-1]["json"]["contents"]] == ["user", "model", "user"]


def test_images_become_inline_data_or_file_data_with_a_guessed_type(client: openai.OpenAI,
                                                                    emulator: BackgroundServer) -> None:
    r = client.chat.completions.create(model="gem", messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg?size=2"}},
        {"type": "image_url", "image_url": {"url": f"data:image/jpg;base64,{PIXEL}"}}]}])
    assert r.choices[0].message.content == ("Hello! You said: what is this (I see 3 images: image/png, "
                                            "image/jpeg, image/jpeg)")
    parts = recorded(emulator)[-1]["json"]["contents"][0]["parts"]
    assert parts[1] == {"inlineData": {"mimeType": "image/png", "data": PIXEL}}
    assert parts[2] == {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.jpg?size=2"}}


def test_audio_and_pdf_parts_become_inline_data(client: openai.OpenAI, emulator: BackgroundServer) -> None:
    wav, pdf = base64.b64encode(b"RIFFfake").decode(), base64.b64encode(b"%PDF-1.4").decode()
    r = client.chat.completions.create(model="gem", messages=[{"role": "user", "content": [
        {"type": "text", "text": "listen"}, {"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": f"data:application/pdf;base64,{pdf}"}}]}])
    assert r.choices[0].message.content == "Hello! You said: listen (I got 2 files: audio/wav, application/pdf)"
    parts = recorded(emulator)[-1]["json"]["contents"][0]["parts"]
    assert parts[1:] == [{"inlineData": {"mimeType": "audio/wav", "data": wav}},
                         {"inlineData": {"mimeType": "application/pdf", "data": pdf}}]


def test_image_url_of_unknown_type_is_a_clear_400(client: openai.OpenAI, emulator: BackgroundServer) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gem", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/picture"}}]}])
    assert "media type" in e.value.body["message"]  # type: ignore[index]
    assert recorded(emulator) == []


def test_tool_call_round_trip_maps_results_back_to_function_names(client: openai.OpenAI,
                                                                  emulator: BackgroundServer) -> None:
    messages: list[Any] = [{"role": "user", "content": "Paris"}]
    r = client.chat.completions.create(model="gem", messages=messages, tools=[WEATHER], tool_choice="auto")
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    tc = function_calls(choice.message)[0]
    assert tc.function.name == "get_weather" and orjson.loads(tc.function.arguments) == {"city": "Paris"}
    assert tc.id.startswith("call_")
    sent = recorded(emulator)[-1]["json"]
    assert sent["tools"] == [{"functionDeclarations": [{
        "name": "get_weather", "description": "Weather in a city",
        "parametersJsonSchema": WEATHER["function"].get("parameters")}]}]
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}
    streamed = client.chat.completions.create(model="gem", messages=messages, tools=[WEATHER], stream=True)
    ids = [t.id for c in streamed for t in (c.choices[0].delta.tool_calls or []) if t.id]
    assert ids == [tc.id]  # derived from the response, the same whole or streamed
    messages += [choice.message, {"role": "tool", "tool_call_id": tc.id, "content": '{"temp": 21}'}]
    r2 = client.chat.completions.create(model="gem", messages=messages, tools=[WEATHER])
    assert r2.choices[0].message.content == 'The tool returned: get_weather={"temp":21}'
    contents = recorded(emulator)[-1]["json"]["contents"]
    assert contents[1] == {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "id": tc.id,
                                                                        "args": {"city": "Paris"}}}]}
    assert contents[2] == {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "id": tc.id,
                                                                           "response": {"temp": 21}}}]}
    messages += [r2.choices[0].message, {"role": "user", "content": "Paris"}]
    r3 = client.chat.completions.create(model="gem", messages=messages, tools=[WEATHER])
    assert r3.choices[0].message.tool_calls[0].id != tc.id  # type: ignore[index]  # same call, new turn


def test_parallel_tool_results_are_one_turn_in_call_order(
        client: openai.OpenAI, emulator: BackgroundServer) -> None:
    calls: list[ChatCompletionMessageToolCallParam] = [
        {"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": "{}"}}
        for i, n in enumerate(("a", "b"))]
    r = client.chat.completions.create(model="gem", messages=[
        {"role": "user", "content": "go"}, {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "c1", "content": "two"},
        {"role": "tool", "tool_call_id": "c0", "content": "one"}])
    assert r.choices[0].message.content == ('The tool returned: a={"output":"one"}; b={"output":"two"}')


def test_logprobs_are_refused_rather_than_dropped(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gem", messages=[{"role": "user", "content": "x"}], logprobs=True)
    assert e.value.code == "unsupported"


def test_tool_result_for_an_unknown_call_is_a_clear_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gem", messages=[
            {"role": "user", "content": "go"}, {"role": "tool", "tool_call_id": "nope", "content": "x"}])
    assert e.value.body["param"] == "messages[1].tool_call_id"  # type: ignore[index]


def test_forced_tool_choice_becomes_mode_any_with_the_allowed_name(client: openai.OpenAI,
                                                                   emulator: BackgroundServer) -> None:
    other: ChatCompletionToolParam = {"type": "function", "function": {
        "name": "noop", "parameters": {"type": "object", "properties": {}}}}
    r = client.chat.completions.create(model="gem", messages=[{"role": "user", "content": "x"}],
                                       tools=[other, WEATHER],
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert function_calls(r.choices[0].message)[0].function.name == "get_weather"
    assert recorded(emulator)[-1]["json"]["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}


def test_gemini3_thought_signatures_round_trip_through_the_openai_sdk(client: openai.OpenAI,
                                                                      emulator: BackgroundServer) -> None:
    messages: list[Any] = [{"role": "user", "content": "Rome"}]
    r = client.chat.completions.create(model="gem3", messages=messages, tools=[WEATHER])
    msg = r.choices[0].message
    sig = msg.tool_calls[0].model_extra["extra_content"]["google"]["thought_signature"]  # type: ignore[index]
    assert sig and sig != "skip_thought_signature_validator"
    messages += [msg, {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": "sunny"}]  # type: ignore[index]
    r2 = client.chat.completions.create(model="gem3", messages=messages, tools=[WEATHER])
    assert r2.choices[0].message.content == 'The tool returned: get_weather={"output":"sunny"}'
    assert recorded(emulator)[-1]["json"]["contents"][1]["parts"][0]["thoughtSignature"] == sig


def test_gemini3_history_without_signatures_gets_googles_placeholder(client: openai.OpenAI,
                                                                    emulator: BackgroundServer) -> None:
    call: ChatCompletionMessageToolCallParam = {"id": "call_from_elsewhere", "type": "function", "function": {
        "name": "get_weather",
                                                                          "arguments": '{"city": "Oslo"}'}}
    r = client.chat.completions.create(model="gem3", tools=[WEATHER], messages=[
        {"role": "user", "content": "Oslo"}, {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_from_elsewhere", "content": "rain"}])
    assert r.choices[0].message.content == 'The tool returned: get_weather={"output":"rain"}'
    part = recorded(emulator)[-1]["json"]["contents"][1]["parts"][0]
    assert part["thoughtSignature"] == "skip_thought_signature_validator"


def test_gemini3_call_ids_are_kept_and_echoed_on_parallel_results(client: openai.OpenAI,
                                                                  emulator: BackgroundServer) -> None:
    clock: ChatCompletionToolParam = {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}}
    messages: list[Any] = [{"role": "user", "content": "use-all-tools"}]
    r = client.chat.completions.create(model="gem3", messages=messages, tools=[WEATHER, clock])
    calls = function_calls(r.choices[0].message)
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert all(c.id.startswith("call_") and len(c.id) < 20 for c in calls)  # Gemini's own ids, not ours
    messages += [r.choices[0].message] + [
        {"role": "tool", "tool_call_id": c.id, "content": f"result {i}"} for i, c in enumerate(calls)]
    r2 = client.chat.completions.create(model="gem3", messages=messages, tools=[WEATHER, clock])
    assert r2.choices[0].message.content == ('The tool returned: get_weather={"output":"result 0"}; '
                                             'get_time={"output":"result 1"}')
    sent = recorded(emulator)[-1]["json"]["contents"]
    assert [p["functionResponse"]["id"] for p in sent[2]["parts"]] == [c.id for c in calls]


def test_parallel_calls_stream_as_separate_tool_call_indexes(client: openai.OpenAI) -> None:
    clock: ChatCompletionToolParam = {"type": "function", "function": {"name": "get_time",
                                                                       "parameters": {"type": "object"}}}
    chunks = list(client.chat.completions.create(
        model="gem3", messages=[{"role": "user", "content": "use-all-tools"}], tools=[WEATHER, clock], stream=True))
    starts = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or []) if tc.id]
    assert [(t.index, delta_function(t).name) for t in starts] == [(0, "get_weather"), (1, "get_time")]
    assert starts[0].model_extra and starts[0].model_extra["extra_content"]["google"]["thought_signature"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_generation_options_are_mapped_to_generation_config(client: openai.OpenAI,
                                                            emulator: BackgroundServer) -> None:
    r = client.chat.completions.create(model="gem", messages=[{"role": "user", "content": "a b c d e f g"}],
                                       temperature=0.2, top_p=0.9, max_tokens=4, stop=["zzz"], n=2, seed=7)
    assert [c.finish_reason for c in r.choices] == ["length", "length"]
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[1].message.content == "Hello! You said: a"
    assert recorded(emulator)[-1]["json"]["generationConfig"] == {
        "temperature": 0.2, "topP": 0.9, "seed": 7, "candidateCount": 2, "maxOutputTokens": 4,
        "stopSequences": ["zzz"]}


def test_json_response_format_asks_for_json(client: openai.OpenAI, emulator: BackgroundServer) -> None:
    schema: dict[str, object] = {"type": "object", "properties": {"answer": {"type": "string"}}}
    r = client.chat.completions.create(model="gem", messages=[{"role": "user", "content": "q"}],
                                       response_format={"type": "json_schema",
                                                        "json_schema": {"name": "a", "schema": schema}})
    assert orjson.loads(r.choices[0].message.content or "") == {"answer": "Hello! You said: q"}
    gc = recorded(emulator)[-1]["json"]["generationConfig"]
    assert gc == {"responseMimeType": "application/json", "responseJsonSchema": schema}


def test_reasoning_effort_becomes_a_thinking_budget_or_level_and_thoughts_count_as_output(
        client: openai.OpenAI, emulator: BackgroundServer) -> None:
    r = client.chat.completions.create(model="gem", messages=[{"role": "user", "content": "x"}],
                                       reasoning_effort="low")
    assert recorded(emulator)[-1]["json"]["generationConfig"] == {"thinkingConfig": {"thinkingBudget": 1024}}
    assert r.usage is not None and r.usage.completion_tokens == 4 + 12  # answer + thoughts
    client.chat.completions.create(model="gem3", messages=[{"role": "user", "content": "x"}],
                                   reasoning_effort="high")
    assert recorded(emulator)[-1]["json"]["generationConfig"] == {"thinkingConfig": {"thinkingLevel": "high"}}


# ---- streaming ---------------------------------------------------------------------------------------

def test_streaming_text_arrives_in_openai_chunks_with_usage(client: openai.OpenAI,
                                                            emulator: BackgroundServer) -> None:
    chunks = list(client.chat.completions.create(
        model="gem", messages=[{"role": "user", "content": "one two three four"}], stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello! You said: one two three four"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7
    assert len({c.id for c in chunks}) == 1
    req = recorded(emulator)[-1]
    assert req["path"].endswith(":streamGenerateContent") and req["query"] == {"alt": "sse"}


def test_streaming_several_candidates_keeps_them_apart_by_index(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="gem", messages=[{"role": "user", "content": "one two three four"}], stream=True, n=2))
    for i in (0, 1):
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices[0].index == i)
        assert text == "Hello! You said: one two three four"
    assert sorted(c.choices[0].index for c in chunks if c.choices[0].finish_reason) == [0, 1]


def test_streaming_tool_call_arrives_as_deltas(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="gem", messages=[{"role": "user", "content": "Oslo"}], tools=[WEATHER], stream=True))
    deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id and delta_function(deltas[0]).name == "get_weather"
    args = "".join(delta_function(d).arguments or "" for d in deltas)
    assert orjson.loads(args) == {"city": "Oslo"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_stream_cut_mid_answer_ends_with_an_error_event(
        gateway: GatewayThread, emulator: BackgroundServer) -> None:
    fault(emulator, disconnect_after_chunks=1, count=1)
    with requests.post(gateway.base_url + "/chat/completions", timeout=10, stream=True, json={
            "model": "gem", "stream": True, "messages": [{"role": "user", "content": "a b c d e f g h"}]}) as r:
        body = r.content
    assert r.status_code == 200
    assert b"Hello!" in body and b'"error"' in body and b"[DONE]" not in body


def test_error_event_mid_stream_ends_the_stream_with_the_mapped_error(gateway: GatewayThread,
                                                                     emulator: BackgroundServer) -> None:
    fault(emulator, status=503, disconnect_after_chunks=2, count=1, message=f"overloaded {KEY}")
    with requests.post(gateway.base_url + "/chat/completions", timeout=10, stream=True, json={
            "model": "gem", "stream": True, "messages": [{"role": "user", "content": "a b c d e f g h"}]}) as r:
        body = r.content
    assert r.status_code == 200 and b"Hello!" in body and b"[DONE]" not in body
    last = orjson.loads(body.strip().split(b"\n\n")[-1][len(b"data: "):])
    assert last["error"]["code"] == "upstream_unavailable" and KEY not in last["error"]["message"]


def test_error_event_before_any_answer_is_a_plain_retryable_error(client: openai.OpenAI,
                                                                  emulator: BackgroundServer) -> None:
    fault(emulator, status=429, retry_after=3, disconnect_after_chunks=0, count=1)
    with pytest.raises(openai.RateLimitError) as e:
        list(client.chat.completions.create(model="gem", messages=[{"role": "user", "content": "x"}], stream=True))
    assert e.value.response.headers["retry-after"] == "3"


def test_stream_that_ends_before_any_event_is_a_retryable_502(client: openai.OpenAI,
                                                              emulator: BackgroundServer) -> None:
    fault(emulator, disconnect_after_chunks=0, count=1)
    with pytest.raises(openai.APIStatusError) as e:
        list(client.chat.completions.create(model="gem", messages=[{"role": "user", "content": "x"}], stream=True))
    assert e.value.status_code == 502


def test_client_disconnect_cancels_the_gemini_stream(
        gateway: GatewayThread, emulator: BackgroundServer) -> None:
    import socket
    import time

    emulator.state.cancelled = 0
    fault(emulator, chunk_delay_ms=200, count=1)
    body = orjson.dumps({"model": "gem", "stream": True,
                         "messages": [{"role": "user", "content": "a b c d e f g h i j k l m n o p"}]})
    s = socket.create_connection(("127.0.0.1", gateway.port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
              b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert b"200 OK" in s.recv(4096)
    s.close()
    deadline = time.monotonic() + 3
    while emulator.state.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert emulator.state.cancelled == 1 and emulator.state.in_flight == 0


# ---- safety ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
def test_blocked_prompt_is_a_content_filter_error(client: openai.OpenAI, stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        r = client.chat.completions.create(model="gem", stream=stream,
                                           messages=[{"role": "user", "content": "about forbidden-topic"}])
        list(r) if stream else None
    assert e.value.code == "content_filter" and "SAFETY" in e.value.body["message"]  # type: ignore[index]


@pytest.mark.parametrize("stream", [False, True])
def test_safety_stop_is_a_content_filter_finish(client: openai.OpenAI, stream: bool) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "say unsafe-output now"}]
    if stream:
        chunks = list(client.chat.completions.create(model="gem", messages=messages, stream=True))
        assert chunks[-1].choices[0].finish_reason == "content_filter"
    else:
        r = client.chat.completions.create(model="gem", messages=messages)
        assert r.choices[0].finish_reason == "content_filter"
        assert r.choices[0].message.content == "Hello! You said: say "


def test_google_options_in_extra_body_reach_gemini(client: openai.OpenAI, emulator: BackgroundServer) -> None:
    relaxed = [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "threshold": "BLOCK_NONE"}]
    r = client.chat.completions.create(
        model="gem", messages=[{"role": "user", "content": "say unsafe-output now"}],
        extra_body={"extra_body": {"google": {"safety_settings": relaxed,
                                              "thinking_config": {"include_thoughts": True}}}})
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == "Hello! You said: say unsafe-output now"
    sent = recorded(emulator)[-1]["json"]
    assert sent["safetySettings"] == relaxed
    assert sent["generationConfig"] == {"thinkingConfig": {"include_thoughts": True}}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gem", messages=[{"role": "user", "content": "x"}],
                                       extra_body={"extra_body": {"google": {"labels": {}}}})
    assert e.value.body["param"] == "extra_body.google.labels"  # type: ignore[index]


# ---- errors ------------------------------------------------------------------------------------------

def test_rate_limit_is_429_with_the_retry_delay_from_the_error_details(client: openai.OpenAI,
                                                                       emulator: BackgroundServer) -> None:
    fault(emulator, status=429, retry_after=7, count=1)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="gem", messages=[{"role": "user", "content": "x"}])
    assert e.value.response.headers["retry-after"] == "7"
    assert e.value.code == "rate_limit_exceeded"


@pytest.mark.parametrize(("status", "expected", "code"), [
    (503, openai.InternalServerError, "upstream_unavailable"),
    (500, openai.InternalServerError, "upstream_unavailable"),
    (403, openai.PermissionDeniedError, "permission_denied"),
    (400, openai.BadRequestError, None),
])
def test_upstream_errors_map_to_gateway_errors(client: openai.OpenAI, emulator: BackgroundServer, status: int,
                                               expected: type[Exception], code: str | None) -> None:
    fault(emulator, status=status, count=1, message=f"boom with {KEY} inside")
    with pytest.raises(expected) as e:
        client.chat.completions.create(model="gem", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == status  # type: ignore[attr-defined]
    assert e.value.code == code  # type: ignore[attr-defined]
    assert KEY not in str(e.value.body) and "boom with [REDACTED]" in str(e.value.body)  # type: ignore[attr-defined]


def test_stream_error_before_the_first_byte_is_a_plain_error_response(client: openai.OpenAI,
                                                                      emulator: BackgroundServer) -> None:
    fault(emulator, status=503, count=1)
    with pytest.raises(openai.InternalServerError):
        list(client.chat.completions.create(model="gem", messages=[{"role": "user", "content": "x"}], stream=True))


def test_too_long_prompt_is_context_length_exceeded(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gem-small", messages=[{"role": "user", "content": "w " * 60}])
    assert e.value.code == "context_length_exceeded"


def test_invalid_api_key_is_401_without_leaking_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.AuthenticationError) as e:
        client.chat.completions.create(model="gem-badkey", messages=[{"role": "user", "content": "x"}])
    assert "API key not valid" in str(e.value) and "WrongKey" not in str(e.value)


def test_expired_vertex_token_is_401(client: openai.OpenAI) -> None:
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="vert-badtoken", messages=[{"role": "user", "content": "x"}])


def test_slow_upstream_is_a_504_timeout(client: openai.OpenAI, emulator: BackgroundServer) -> None:
    import time

    fault(emulator, latency_ms=800, count=1)
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="gem-slow", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 504 and e.value.code == "timeout"
    deadline = time.monotonic() + 3  # let the emulator's abandoned handler finish before the module ends
    while emulator.state.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)


def test_unreachable_upstream_is_502(start_gateway: Any) -> None:
    from relaygate.testing.base import free_port

    gw = start_gateway({"models": [{"name": "g", "deployments": [{
        "provider": "gemini", "model": "gemini-2.5-flash", "api_base": f"http://127.0.0.1:{free_port()}",
        "api_key": KEY, "timeout": 2}]}]})
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(model="g", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 502 and KEY not in str(e.value.body)
