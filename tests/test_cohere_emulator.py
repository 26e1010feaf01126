"""The Cohere emulator against its oracle, the official ``cohere`` SDK (ClientV2): every shape it sends parses."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator

import cohere
import httpx
import orjson
import pydantic
import pytest
from cohere import EmbedByTypeResponse
from cohere.v2.types import V2ChatResponse
from cohere.v2.types.v2chat_stream_response import V2ChatStreamResponse

from relaygate.testing.base import BackgroundServer
from relaygate.testing.cohere import CohereEmulatorOptions, create_app

KEY = "co-test-key-0123456789"
MODEL = "command-a-03-2025"
WEATHER = cohere.ToolV2(type="function", function=cohere.ToolV2Function(
    name="get_weather", description="Weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}))


@pytest.fixture(scope="module")
def emulator() -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(CohereEmulatorOptions(api_key=KEY, context_window=200))) as srv:
        yield srv


@pytest.fixture
def co(emulator: BackgroundServer) -> Iterator[cohere.ClientV2]:
    httpx.post(emulator.url + "/_emulator/faults", json={"count": 0})
    yield cohere.ClientV2(api_key=KEY, base_url=emulator.url, timeout=10)


def raw(emulator: BackgroundServer, path: str, body: dict) -> httpx.Response:  # type: ignore[type-arg]
    return httpx.post(emulator.url + path, json=body, headers={"authorization": f"Bearer {KEY}"}, timeout=10)


def test_chat_answer_parses_in_the_sdk_and_validates_strictly(co: cohere.ClientV2,
                                                               emulator: BackgroundServer) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]
    r = co.chat(model=MODEL, messages=messages)  # type: ignore[arg-type]
    assert r.finish_reason == "COMPLETE"
    assert r.message.content is not None and r.message.content[0].type == "text"
    assert r.message.content[0].text == "Hello! You said: hello there [system: Be brief.]"
    assert r.usage is not None and r.usage.tokens is not None and r.usage.billed_units is not None
    tokens, billed = r.usage.tokens.input_tokens, r.usage.billed_units.input_tokens
    assert tokens is not None and billed is not None and tokens > billed  # tokens include the template
    V2ChatResponse.model_validate(raw(emulator, "/v2/chat", {"model": MODEL, "messages": messages}).json())


def test_chat_calls_the_first_tool_then_answers_its_result(co: cohere.ClientV2) -> None:
    r = co.chat(model=MODEL, messages=[{"role": "user", "content": "Paris"}], tools=[WEATHER])  # type: ignore[list-item]
    assert r.finish_reason == "TOOL_CALL"
    assert r.message.tool_plan and r.message.tool_calls
    call = r.message.tool_calls[0]
    assert call.function is not None and call.function.name == "get_weather"
    assert orjson.loads(call.function.arguments or "") == {"city": "Paris"}
    followup = co.chat(model=MODEL, tools=[WEATHER], messages=[
        cohere.UserChatMessageV2(content="Paris"),
        cohere.AssistantChatMessageV2(tool_plan=r.message.tool_plan, tool_calls=[cohere.ToolCallV2(
            id=call.id, type="function",
            function=cohere.ToolCallV2Function(name="get_weather", arguments=call.function.arguments))]),
        cohere.ToolChatMessageV2(tool_call_id=call.id or "", content="sunny, 21C")])
    assert followup.finish_reason == "COMPLETE"
    assert followup.message.content is not None
    assert followup.message.content[0].text == "The tool returned: sunny, 21C"  # type: ignore[union-attr]


def test_tool_result_for_an_unknown_call_is_refused_like_cohere(co: cohere.ClientV2) -> None:
    with pytest.raises(cohere.BadRequestError) as e:
        co.chat(model=MODEL, messages=[cohere.UserChatMessageV2(content="x"),
                                       cohere.ToolChatMessageV2(tool_call_id="nope", content="1")])
    assert e.value.body["message"] == "tool call id not found in previous tool calls"


def test_stream_events_parse_in_the_sdk_in_cohere_order(
        co: cohere.ClientV2, emulator: BackgroundServer) -> None:
    events = list(co.chat_stream(model=MODEL, messages=[cohere.UserChatMessageV2(content="Paris")],
                                 tools=[WEATHER]))
    kinds = [e.type for e in events]
    assert kinds[0] == "message-start" and kinds[-1] == "message-end"
    assert "tool-plan-delta" in kinds and kinds.index("tool-call-start") < kinds.index("tool-call-delta")
    assert kinds.index("tool-call-end") == len(kinds) - 2
    args = ""
    for e in events:
        if isinstance(e, cohere.ToolCallDeltaV2ChatStreamResponse):
            assert e.delta and e.delta.message and e.delta.message.tool_calls
            assert e.delta.message.tool_calls.function and e.delta.message.tool_calls.function.arguments
            args += e.delta.message.tool_calls.function.arguments
    assert orjson.loads(args) == {"city": "Paris"}
    end = events[-1]
    assert isinstance(end, cohere.MessageEndV2ChatStreamResponse) and end.delta and end.delta.usage
    assert end.delta.finish_reason == "TOOL_CALL"
    assert end.delta.usage.tokens and (end.delta.usage.tokens.output_tokens or 0) > 0
    text = ""
    for e in co.chat_stream(model=MODEL, messages=[cohere.UserChatMessageV2(content="one two")]):
        if isinstance(e, cohere.ContentDeltaV2ChatStreamResponse):
            assert e.delta and e.delta.message and e.delta.message.content and e.delta.message.content.text
            text += e.delta.message.content.text
    assert text == "Hello! You said: one two"
    # each SSE data line validates strictly against the SDK's discriminated union
    body = raw(emulator, "/v2/chat", {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "a"}]})
    datas = [line[6:] for line in body.text.splitlines() if line.startswith("data: ")]
    assert datas[-1] == "[DONE]"
    adapter = pydantic.TypeAdapter(V2ChatStreamResponse)
    for d in datas[:-1]:
        adapter.validate_python(orjson.loads(d))


def test_generation_error_ends_the_stream_with_finish_reason_error(co: cohere.ClientV2,
                                                                  emulator: BackgroundServer) -> None:
    httpx.post(emulator.url + "/_emulator/faults", json={"error_code": "ERROR", "message": "model crashed"})
    events = list(co.chat_stream(model=MODEL, messages=[{"role": "user", "content": "hi"}]))  # type: ignore[list-item]
    assert events[-1].delta.finish_reason == "ERROR" and events[-1].delta.error == "model crashed"  # type: ignore[union-attr]


def test_max_tokens_and_stop_sequences_set_cohere_finish_reasons(co: cohere.ClientV2) -> None:
    msgs = [{"role": "user", "content": "alpha beta gamma delta"}]
    assert co.chat(model=MODEL, messages=msgs, max_tokens=2).finish_reason == "MAX_TOKENS"  # type: ignore[arg-type]
    r = co.chat(model=MODEL, messages=msgs, stop_sequences=["gamma"])  # type: ignore[arg-type]
    assert r.finish_reason == "STOP_SEQUENCE"
    assert r.message.content[0].text == "Hello! You said: alpha beta "  # type: ignore[index,union-attr]


def test_embed_types_parse_and_base64_is_float32_little_endian(co: cohere.ClientV2,
                                                               emulator: BackgroundServer) -> None:
    r = co.embed(model="embed-v4.0", texts=["a b", "c"], input_type="search_query",
                 embedding_types=["float", "base64", "int8", "uint8", "binary", "ubinary"], output_dimension=32)
    floats = r.embeddings.float_
    assert floats is not None and len(floats) == 2 and len(floats[0]) == 32
    assert r.embeddings.base64 is not None
    packed = base64.b64decode(r.embeddings.base64[0])
    assert list(struct.unpack("<32f", packed)) == pytest.approx(floats[0], abs=1e-6)
    assert len(r.embeddings.ubinary[0]) == 4 and len(r.embeddings.int8[1]) == 32  # type: ignore[index]
    again = co.embed(model="embed-v4.0", texts=["a b"], input_type="search_query", embedding_types=["float"],
                     output_dimension=32)
    assert again.embeddings.float_ == [floats[0]]  # deterministic
    EmbedByTypeResponse.model_validate(raw(emulator, "/v2/embed", {
        "model": "embed-v4.0", "texts": ["x"], "input_type": "clustering"}).json())


@pytest.mark.parametrize(("status", "error"), [
    (400, cohere.BadRequestError), (401, cohere.UnauthorizedError), (403, cohere.ForbiddenError),
    (429, cohere.TooManyRequestsError), (500, cohere.InternalServerError), (503, cohere.ServiceUnavailableError),
])
def test_fault_statuses_become_the_sdk_error_classes(co: cohere.ClientV2, emulator: BackgroundServer,
                                                     status: int, error: type[Exception]) -> None:
    httpx.post(emulator.url + "/_emulator/faults", json={"status": status, "count": 2})
    with pytest.raises(error) as e:
        co.chat(model=MODEL, messages=[{"role": "user", "content": "x"}],  # type: ignore[list-item]
                request_options={"max_retries": 0})
    assert isinstance(e.value.body["message"], str) and e.value.body["message"]  # type: ignore[attr-defined]
    with pytest.raises(error):
        co.embed(model="embed-v4.0", texts=["x"], input_type="search_query", request_options={"max_retries": 0})


def test_wrong_key_unknown_model_and_too_long_prompt_are_refused(co: cohere.ClientV2,
                                                                 emulator: BackgroundServer) -> None:
    bad = cohere.ClientV2(api_key="wrong", base_url=emulator.url)
    with pytest.raises(cohere.UnauthorizedError) as e:
        bad.chat(model=MODEL, messages=[{"role": "user", "content": "x"}])  # type: ignore[list-item]
    assert e.value.body["message"] == "invalid api token"
    with pytest.raises(cohere.NotFoundError):
        co.chat(model="command-x", messages=[{"role": "user", "content": "x"}])  # type: ignore[list-item]
    with pytest.raises(cohere.BadRequestError) as too_long:
        co.chat(model=MODEL, messages=[{"role": "user", "content": "word " * 300}])  # type: ignore[list-item]
    assert too_long.value.body["message"].startswith("too many tokens")


def test_openai_only_fields_are_refused(emulator: BackgroundServer) -> None:
    r = raw(emulator, "/v2/chat", {"model": MODEL, "top_p": 0.5, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and "top_p" in r.json()["message"]


def test_reasoning_models_think_first_unless_disabled(
        co: cohere.ClientV2, emulator: BackgroundServer) -> None:
    model, msgs = "command-a-reasoning-08-2025", [{"role": "user", "content": "ping"}]
    r = co.chat(model=model, messages=msgs)  # type: ignore[arg-type]
    assert [c.type for c in r.message.content or []] == ["thinking", "text"]
    events = list(co.chat_stream(model=model, messages=msgs))  # type: ignore[arg-type]
    starts = [e.delta.message.content.type for e in events if e.type == "content-start"]  # type: ignore[union-attr]
    assert starts == ["thinking", "text"]
    assert "".join(e.delta.message.content.thinking or "" for e in events  # type: ignore[union-attr]
                   if e.type == "content-delta").startswith("The user wants")
    plain = co.chat(model=model, messages=msgs, thinking={"type": "disabled"})  # type: ignore[arg-type]
    assert [c.type for c in plain.message.content or []] == ["text"]
    body = raw(emulator, "/v2/chat", {"model": model, "stream": True, "messages": msgs})
    adapter = pydantic.TypeAdapter(V2ChatStreamResponse)
    for line in body.text.splitlines():
        if line.startswith("data: {"):
            adapter.validate_python(orjson.loads(line[6:]))


def test_models_endpoints_parse_in_the_sdk(co: cohere.ClientV2, emulator: BackgroundServer) -> None:
    from cohere.types import GetModelResponse, ListModelsResponse

    info = co.models.get("embed-v4.0")
    assert info.name == "embed-v4.0" and info.endpoints == ["embed"]
    listed = co.models.list()
    assert MODEL in [m.name for m in listed.models or []]
    with pytest.raises(cohere.NotFoundError):
        co.models.get("command-x")
    headers = {"authorization": f"Bearer {KEY}"}
    GetModelResponse.model_validate(httpx.get(emulator.url + f"/v1/models/{MODEL}", headers=headers).json())
    ListModelsResponse.model_validate(httpx.get(emulator.url + "/v1/models", headers=headers).json())


def test_transcription_parses_in_the_sdk(co: cohere.ClientV2, emulator: BackgroundServer) -> None:
    from relaygate.testing.openai_audio import tone_pcm, wav_bytes

    wav = wav_bytes(tone_pcm(0.2, 440), comment="hello there")
    r = co.audio.transcriptions.create(model="cohere-transcribe-03-2026", language="en", file=("a.wav", wav))
    assert r.text == "hello there"
    with pytest.raises(cohere.BadRequestError) as e:
        co.audio.transcriptions.create(model="cohere-transcribe-03-2026", language="en", file=("a.m4a", wav))
    assert "file must be one of" in e.value.body["message"]
    missing = httpx.post(emulator.url + "/v2/audio/transcriptions", headers={"authorization": f"Bearer {KEY}"},
                         data={"model": "cohere-transcribe-03-2026", "prompt": "x"}, files={"file": ("a.wav", wav)})
    assert missing.status_code == 400 and "prompt" in missing.json()["message"]


def test_grounded_answers_cite_their_documents(co: cohere.ClientV2, emulator: BackgroundServer) -> None:
    docs = [{"id": "n1", "data": {"title": "notes", "snippet": "Ada wrote it."}}]
    r = co.chat(model=MODEL, messages=[{"role": "user", "content": "who?"}], documents=docs)  # type: ignore[arg-type,list-item]
    text = r.message.content[0].text  # type: ignore[index,union-attr]
    assert text == "Hello! You said: who? [documents: notes]"
    cite = (r.message.citations or [])[0]
    assert text[cite.start:cite.end] == cite.text == "[documents: notes]"
    assert cite.sources is not None and cite.sources[0].type == "document" and cite.sources[0].id == "n1"
    events = list(co.chat_stream(model=MODEL, messages=[{"role": "user", "content": "who?"}], documents=docs))  # type: ignore[arg-type,list-item]
    kinds = [e.type for e in events]
    assert kinds.index("citation-start") < kinds.index("citation-end") < kinds.index("content-end")
    body = raw(emulator, "/v2/chat", {"model": MODEL, "stream": True, "documents": docs,
                                      "messages": [{"role": "user", "content": "who?"}]})
    adapter = pydantic.TypeAdapter(V2ChatStreamResponse)
    for line in body.text.splitlines():
        if line.startswith("data: {"):
            adapter.validate_python(orjson.loads(line[6:]))
