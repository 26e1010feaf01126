"""The ``cohere`` provider end to end: the openai SDK → relaygate → the Cohere emulator (and embeddings direct)."""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from relaygate.config import CohereDeployment
from relaygate.core.call import Call, Route
from relaygate.core.errors import BadRequest, GatewayError, Unsupported
from relaygate.providers.cohere.provider import CohereProvider
from relaygate.routing.deployment import Deployment
from relaygate.testing.base import BackgroundServer
from relaygate.testing.cohere import CohereEmulatorOptions, create_app, embed_vector
from relaygate.testing.gateway import GatewayThread
from relaygate.upstream import Client
from tests.openai_types import delta_function, function_calls

KEY = "co-upstream-secret-0123456789abcdef"
WEATHER: ChatCompletionToolParam = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def emulator() -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(CohereEmulatorOptions(api_key=KEY, context_window=400))) as srv:
        yield srv


def cohere_model(name: str, emulator: BackgroundServer, model: str = "command-a-03-2025",
                 **extra: Any) -> dict[str, Any]:
    return {"name": name, "deployments": [{"provider": "cohere", "model": model, "api_base": emulator.url,
                                           "api_key": KEY, "timeout": 5, **extra}]}


@pytest.fixture(scope="module")
def gateway(emulator: BackgroundServer) -> Iterator[GatewayThread]:
    config = {"models": [cohere_model("command", emulator),
                         cohere_model("command-slow", emulator, timeout=0.5),
                         cohere_model("command-badkey", emulator, api_key="wrong-key"),
                         cohere_model("embed", emulator, model="embed-v4.0"),
                         cohere_model("transcribe", emulator, model="cohere-transcribe-03-2026"),
                         cohere_model("transcribe-buffered", emulator, model="cohere-transcribe-03-2026",
                                      buffer_uploads=True),
                         cohere_model("*", emulator, model="*")]}
    with GatewayThread(config) as gw:
        yield gw


@pytest.fixture
def client(gateway: GatewayThread, emulator: BackgroundServer) -> Iterator[openai.OpenAI]:
    httpx.delete(emulator.url + "/_emulator/faults")
    httpx.delete(emulator.url + "/_emulator/requests")
    yield openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=10)
    httpx.delete(emulator.url + "/_emulator/faults")


def sent(emulator: BackgroundServer) -> dict[str, Any]:
    """The last body the emulator received."""
    body: dict[str, Any] = httpx.get(emulator.url + "/_emulator/requests").json()["requests"][-1]["json"]
    return body


def fault(emulator: BackgroundServer, **plan: Any) -> None:
    httpx.post(emulator.url + "/_emulator/faults", json=plan).raise_for_status()


def test_plain_chat_is_translated_both_ways(client: openai.OpenAI, emulator: BackgroundServer) -> None:
    r = client.chat.completions.create(model="command", messages=[{"role": "user", "content": "hello there"}],
                                       temperature=0.2, top_p=0.5, seed=7, max_tokens=50, stop=["zzz"])
    assert r.choices[0].message.content == "Hello! You said: hello there"
    assert r.choices[0].finish_reason == "stop"
    assert r.model == "command-a-03-2025"
    body = sent(emulator)
    assert body["model"] == "command-a-03-2025"
    assert {k: body[k] for k in ("temperature", "p", "seed", "max_tokens", "stop_sequences")} == {
        "temperature": 0.2, "p": 0.5, "seed": 7, "max_tokens": 50, "stop_sequences": ["zzz"]}
    assert "stream" not in body and "top_p" not in body
    # usage comes from usage.tokens (what the model processed, prompt template included)
    assert r.usage is not None and r.usage.prompt_tokens == 6 + 64 and r.usage.completion_tokens == 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_system_prompt_and_multi_turn_reach_cohere_in_order(client: openai.OpenAI,
                                                            emulator: BackgroundServer) -> None:
    r = client.chat.completions.create(model="command", messages=[
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "second"}]}])
    assert r.choices[0].message.content == "Hello! You said: second [system: Be brief.] [turn 2]"
    assert sent(emulator)["messages"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"}, {"role": "user", "content": [{"type": "text", "text": "second"}]}]


def test_images_are_sent_as_cohere_image_url_blocks(
        client: openai.OpenAI, emulator: BackgroundServer) -> None:
    png = "data:image/png;base64," + base64.b64encode(b"\x89PNG fake").decode()
    r = client.chat.completions.create(model="command", messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": png, "detail": "low"}}]}])
    assert r.choices[0].message.content == "Hello! You said: what is this (I see 1 image)"
    assert sent(emulator)["messages"][0]["content"][1] == {"type": "image_url",
                                                           "image_url": {"url": png, "detail": "low"}}


def test_tool_call_round_trip(client: openai.OpenAI, emulator: BackgroundServer) -> None:
    messages: list[Any] = [{"role": "user", "content": "Paris"}]
    first = client.chat.completions.create(model="command", messages=messages, tools=[WEATHER],
                                           tool_choice="required")
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert sent(emulator)["tool_choice"] == "REQUIRED"
    call = function_calls(choice.message)[0]
    assert call.function.name == "get_weather" and orjson.loads(call.function.arguments) == {"city": "Paris"}
    assert choice.message.content == "I will use the get_weather tool to answer."  # Cohere's tool_plan
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"}]
    second = client.chat.completions.create(model="command", messages=messages, tools=[WEATHER])
    assert second.choices[0].message.content == "The tool returned: sunny, 21C"
    assert second.choices[0].finish_reason == "stop"
    assistant, tool = sent(emulator)["messages"][1:]
    assert assistant == {"role": "assistant", "tool_plan": "I will use the get_weather tool to answer.",
                         "tool_calls": [{"id": call.id, "type": "function", "function": {
                             "name": "get_weather", "arguments": call.function.arguments}}]}
    assert tool == {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"}


def test_named_tool_choice_offers_only_that_tool(client: openai.OpenAI, emulator: BackgroundServer) -> None:
    other: ChatCompletionToolParam = {"type": "function", "function": {"name": "get_time",
                                                                       "parameters": {"type": "object"}}}
    r = client.chat.completions.create(model="command", messages=[{"role": "user", "content": "x"}],
                                       tools=[other, WEATHER],
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert function_calls(r.choices[0].message)[0].function.name == "get_weather"
    body = sent(emulator)
    assert [t["function"]["name"] for t in body["tools"]] == ["get_weather"] and body["tool_choice"] == "REQUIRED"
    client.chat.completions.create(model="command", messages=[{"role": "user", "content": "x"}],
                                   tools=[WEATHER], tool_choice="none")
    assert sent(emulator)["tool_choice"] == "NONE"


def test_json_response_format_is_forwarded(client: openai.OpenAI, emulator: BackgroundServer) -> None:
    schema: dict[str, object] = {"type": "object", "properties": {"answer": {"type": "string"}}}
    r = client.chat.completions.create(model="command", messages=[{"role": "user", "content": "hi"}],
                                       response_format={"type": "json_schema",
                                                        "json_schema": {"name": "a", "schema": schema}})
    assert orjson.loads(r.choices[0].message.content or "") == {"answer": "Hello! You said: hi"}
    assert sent(emulator)["response_format"] == {"type": "json_object", "json_schema": schema}


def test_stream_text_arrives_incrementally_with_usage(
        client: openai.OpenAI, emulator: BackgroundServer) -> None:
    chunks = list(client.chat.completions.create(model="command", stream=True,
                                                 stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": "one two three"}]))
    assert sent(emulator)["stream"] is True
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) == 6 and "".join(texts) == "Hello! You said: one two three"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert len({c.id for c in chunks}) == 1
    whole = client.chat.completions.create(model="command", messages=[{"role": "user", "content": "one two three"}])
    # ids of the gateway's own: one per answer, never Cohere's generation id under another prefix
    assert chunks[0].id != whole.id and whole.id.startswith("chatcmpl-") and chunks[0].id.startswith("chatcmpl-")


def test_stream_tool_call_deltas(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="command", stream=True, tools=[WEATHER],
                                                 messages=[{"role": "user", "content": "Paris"}]))
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert deltas[0].id and delta_function(deltas[0]).name == "get_weather"
    assert {d.index for d in deltas} == {0}
    args = "".join(delta_function(d).arguments or "" for d in deltas)
    assert orjson.loads(args) == {"city": "Paris"} and len(deltas) >= 3  # arguments came in pieces
    plan = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert plan == "I will use the get_weather tool to answer."
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert all(c.usage is None for c in chunks)  # not asked for


def test_finish_reasons_map_to_openai(client: openai.OpenAI) -> None:
    msgs: list[ChatCompletionMessageParam] = [{"role": "user", "content": "alpha beta gamma delta"}]
    assert client.chat.completions.create(model="command", messages=msgs,
                                          max_completion_tokens=2).choices[0].finish_reason == "length"
    r = client.chat.completions.create(model="command", messages=msgs, stop="gamma")
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content == "Hello! You said: alpha beta "


def test_generation_error_is_an_error_not_an_answer(
        client: openai.OpenAI, emulator: BackgroundServer) -> None:
    fault(emulator, error_code="ERROR", count=1)
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="command", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 502
    fault(emulator, error_code="ERROR", message="model crashed", count=1)
    stream = client.chat.completions.create(model="command", stream=True,
                                            messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.APIError) as streamed:
        list(stream)
    assert "model crashed" in str(streamed.value)


@pytest.mark.parametrize(("plan", "error", "status", "code"), [
    ({"status": 429, "retry_after": 7}, openai.RateLimitError, 429, "rate_limit_exceeded"),
    ({"status": 500}, openai.InternalServerError, 500, "upstream_unavailable"),
    ({"status": 503}, openai.InternalServerError, 503, "upstream_unavailable"),
    ({"status": 504}, openai.InternalServerError, 504, "timeout"),
    ({"status": 400, "message": "too many tokens: size limit exceeded by 12 tokens. Try using shorter or "
                                "fewer inputs."}, openai.BadRequestError, 400, "context_length_exceeded"),
    ({"status": 400, "message": "invalid request: temperature must be between 0 and 1.0 inclusive."},
     openai.BadRequestError, 400, None),
    ({"status": 401}, openai.AuthenticationError, 401, "upstream_auth_failed"),
    ({"status": 403}, openai.PermissionDeniedError, 403, "permission_denied"),
    ({"status": 498}, openai.BadRequestError, 400, "content_filter"),
    ({"status": 402, "message": "Please add or update your payment method"}, openai.PermissionDeniedError, 403,
     "payment_required"),
    ({"status": 499}, openai.InternalServerError, 502, "upstream_unavailable"),
    ({"status": 422}, openai.UnprocessableEntityError, 422, None),
    ({"status": 404, "message": "model 'x' not found"}, openai.NotFoundError, 404, "not_found"),
])
def test_cohere_errors_map_to_gateway_errors(client: openai.OpenAI, emulator: BackgroundServer,
                                             plan: dict[str, Any], error: type[openai.APIStatusError],
                                             status: int, code: str | None) -> None:
    fault(emulator, count=2, **plan)
    for stream in (False, True):  # a stream fails before its first byte the same way
        with pytest.raises(error) as e:
            client.chat.completions.create(model="command", messages=[{"role": "user", "content": "x"}],
                                           stream=stream)
        assert e.value.status_code == status
        body = e.value.body
        assert isinstance(body, dict) and body.get("code") == code and body["message"].startswith("cohere: ")
        if status == 429:
            assert e.value.response.headers["retry-after"] == "7"


def test_real_context_overflow_and_bad_key_map(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="command", messages=[{"role": "user", "content": "word " * 500}])
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.AuthenticationError) as auth:
        client.chat.completions.create(model="command-badkey", messages=[{"role": "user", "content": "x"}])
    assert "invalid api token" in auth.value.message and KEY not in auth.value.message


def test_upstream_timeout_and_dropped_connection(client: openai.OpenAI, emulator: BackgroundServer) -> None:
    fault(emulator, latency_ms=1500, count=1)
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="command-slow", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 504 and time.monotonic() - started < 1.4
    fault(emulator, drop_connection=True, count=1)
    with pytest.raises(openai.InternalServerError) as dropped:
        client.chat.completions.create(model="command", messages=[{"role": "user", "content": "x"}])
    assert dropped.value.status_code == 502


def test_stream_cut_mid_way_ends_with_an_error_event(
        client: openai.OpenAI, emulator: BackgroundServer) -> None:
    fault(emulator, disconnect_after_chunks=4, count=1)
    stream = client.chat.completions.create(model="command", stream=True,
                                            messages=[{"role": "user", "content": "a b c d e f"}])
    got: list[str] = []
    with pytest.raises(openai.APIError):
        for c in stream:
            got.append(c.choices[0].delta.content or "" if c.choices else "")
    assert "".join(got).startswith("Hello! ")


def test_requests_cohere_cannot_serve_are_refused_clearly(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="command", n=2, messages=[{"role": "user", "content": "x"}])
    assert e.value.param == "n"
    with pytest.raises(openai.BadRequestError) as audio:
        client.chat.completions.create(model="command", messages=[{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}])
    assert audio.value.param == "messages[0].content[0].type"
    with pytest.raises(openai.BadRequestError) as legacy:
        client.chat.completions.create(model="command", messages=[{"role": "user", "content": "x"}],
                                       functions=[{"name": "f", "parameters": {"type": "object"}}])
    assert legacy.value.param == "functions" and legacy.value.code == "unsupported"


# ---- embeddings through the provider (the /v1/embeddings route is another helper's) ------------------------

def run_embeddings(
        emulator: BackgroundServer, body: dict[str, Any], **config: Any) -> tuple[dict[str, Any], Any]:
    async def go() -> tuple[dict[str, Any], Any]:
        async with Client() as client:
            cfg = CohereDeployment(model="embed-v4.0", api_base=emulator.url, api_key=KEY,
                                   **config)
            provider = CohereProvider(cfg, client)
            call = Call(id="t", route=Route.EMBEDDINGS, model="embed", body=body)
            call.deployment = Deployment("embed/cohere/0", "embed", cfg, provider)
            reply = await provider.embeddings(call)
            assert reply.body is not None
            return orjson.loads(reply.body), reply.usage
    return asyncio.run(go())


@pytest.fixture
def clean(emulator: BackgroundServer) -> Callable[[], None]:
    def reset() -> None:
        httpx.delete(emulator.url + "/_emulator/faults")
        httpx.delete(emulator.url + "/_emulator/requests")
    reset()
    return reset


def test_embeddings_float_default_input_type_and_usage(emulator: BackgroundServer, clean: Any) -> None:
    data, usage = run_embeddings(emulator, {"model": "embed", "input": ["hello world", "bye"], "dimensions": 16})
    assert [d["index"] for d in data["data"]] == [0, 1] and data["object"] == "list"
    assert data["data"][0]["embedding"] == embed_vector("embed-v4.0", "search_document", "hello world", 16)
    assert data["usage"] == {"prompt_tokens": 3, "total_tokens": 3} and usage.prompt_tokens == 3
    assert sent(emulator) == {"model": "embed-v4.0", "texts": ["hello world", "bye"],
                              "input_type": "search_document", "embedding_types": ["float"],
                              "output_dimension": 16}


def test_embeddings_base64_is_openai_packing(emulator: BackgroundServer, clean: Any) -> None:
    data, _ = run_embeddings(emulator, {"model": "embed", "input": "hi", "encoding_format": "base64",
                                        "dimensions": 8}, input_type="search_query")
    packed = base64.b64decode(data["data"][0]["embedding"])
    assert list(struct.unpack("<8f", packed)) == pytest.approx(embed_vector("embed-v4.0", "search_query", "hi", 8))
    assert sent(emulator)["input_type"] == "search_query"  # from the deployment config


def test_embeddings_over_96_inputs_are_split_into_batches(emulator: BackgroundServer, clean: Any) -> None:
    texts = [f"t{i}" for i in range(200)]
    data, usage = run_embeddings(emulator, {"model": "embed", "input": texts, "dimensions": 8,
                                            "input_type": "clustering"})
    assert len(data["data"]) == 200 and usage.prompt_tokens == 200
    assert data["data"][150]["embedding"] == embed_vector("embed-v4.0", "clustering", "t150", 8)
    sizes = sorted(len(r["json"]["texts"]) for r in httpx.get(emulator.url + "/_emulator/requests").json()["requests"])
    assert sizes == [8, 96, 96]


def test_embeddings_bad_inputs_and_upstream_errors(emulator: BackgroundServer, clean: Any) -> None:
    with pytest.raises(Unsupported):
        run_embeddings(emulator, {"model": "embed", "input": [[1, 2, 3]]})
    with pytest.raises(BadRequest) as e:
        run_embeddings(emulator, {"model": "embed", "input": "x", "input_type": "bogus"})
    assert e.value.param == "input_type"
    fault(emulator, status=429, count=1)
    with pytest.raises(GatewayError) as limited:
        run_embeddings(emulator, {"model": "embed", "input": "x"})
    assert limited.value.kind == "rate_limited"


def test_config_rejects_an_unknown_input_type(emulator: BackgroundServer) -> None:
    with pytest.raises(ValueError, match="input_type"):
        run_embeddings(emulator, {"model": "embed", "input": "x"}, input_type="nonsense")


def test_openai_sdk_embeddings_through_the_gateway(client: openai.OpenAI, emulator: BackgroundServer) -> None:
    r = client.embeddings.create(model="embed", input=["hello", "world"], dimensions=8)
    for d, text in zip(r.data, ("hello", "world"), strict=True):  # the SDK asks for base64 and unpacks float32
        assert d.embedding == pytest.approx(embed_vector("embed-v4.0", "search_document", text, 8), abs=1e-6)
    assert r.usage.prompt_tokens == 2
    floats = client.embeddings.create(model="embed", input="hello", dimensions=8, encoding_format="float")
    assert floats.data[0].embedding == embed_vector("embed-v4.0", "search_document", "hello", 8)
    query = client.embeddings.create(model="embed", input="hello", dimensions=8,
                                     extra_body={"input_type": "search_query"})
    assert query.data[0].embedding == pytest.approx(embed_vector("embed-v4.0", "search_query", "hello", 8))


def test_reasoning_effort_sets_thinking_and_thoughts_stay_out_of_the_answer(
        gateway: GatewayThread, client: openai.OpenAI, emulator: BackgroundServer) -> None:
    msgs: list[ChatCompletionMessageParam] = [{"role": "user", "content": "ping"}]
    r = client.chat.completions.create(model="cohere/command-a-reasoning-08-2025", messages=msgs)
    assert r.choices[0].message.content == "Hello! You said: ping"
    assert r.usage is not None and r.usage.completion_tokens > 4  # the thinking is billed as output
    assert "thinking" not in sent(emulator)
    chunks = list(client.chat.completions.create(model="cohere/command-a-reasoning-08-2025", messages=msgs,
                                                 stream=True, reasoning_effort="medium"))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello! You said: ping"
    assert sent(emulator)["thinking"] == {"type": "enabled", "token_budget": 8192}
    client.chat.completions.create(model="command", messages=msgs, reasoning_effort="none")
    assert sent(emulator)["thinking"] == {"type": "disabled"}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="command", messages=msgs, reasoning_effort="max")
    assert e.value.param == "reasoning_effort"


def test_parameters_without_a_cohere_counterpart_are_named_not_forwarded(
        client: openai.OpenAI, emulator: BackgroundServer) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="command", messages=[{"role": "user", "content": "x"}], tools=[WEATHER],
        logit_bias={"42": 5}, parallel_tool_calls=False, user="u1")
    assert raw.headers["x-relaygate-dropped-params"] == "logit_bias,parallel_tool_calls"
    assert raw.parse().choices[0].finish_reason == "tool_calls"
    assert not {"logit_bias", "parallel_tool_calls", "user"} & set(sent(emulator))
    plain = client.chat.completions.with_raw_response.create(model="command",
                                                             messages=[{"role": "user", "content": "x"}])
    assert "x-relaygate-dropped-params" not in plain.headers


def test_stream_that_breaks_before_its_first_event_is_an_http_error(client: openai.OpenAI,
                                                                     emulator: BackgroundServer) -> None:
    fault(emulator, disconnect_after_chunks=0, count=1)
    with pytest.raises(openai.InternalServerError) as e:  # not an in-stream error: a fallback could still retry
        client.chat.completions.create(model="command", stream=True, messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 502


def test_probe_checks_key_model_and_outages(emulator: BackgroundServer, clean: Any) -> None:
    async def probe(**config: Any) -> None:
        async with Client() as client:
            cfg = CohereDeployment(**{"model": "command-a-03-2025", "api_base": emulator.url, "api_key": KEY,
                                      **config})
            await CohereProvider(cfg, client).probe(time.monotonic() + 10)

    asyncio.run(probe())
    assert httpx.get(emulator.url + "/_emulator/requests").json()["requests"][-1]["path"] == \
        "/v1/models/command-a-03-2025"
    asyncio.run(probe(model="*"))  # a wildcard names no model to check: nothing is sent
    assert len(httpx.get(emulator.url + "/_emulator/requests").json()["requests"]) == 1
    for config, kind in (({"api_key": "wrong"}, "auth"), ({"model": "command-x"}, "not_found")):
        with pytest.raises(GatewayError) as e:
            asyncio.run(probe(**config))
        assert e.value.kind == kind
    fault(emulator, status=503, count=1)
    with pytest.raises(GatewayError) as down:
        asyncio.run(probe())
    assert down.value.kind == "unavailable"


def test_sampling_options_beyond_cohere_ranges_are_moved_to_the_bound_and_named(
        client: openai.OpenAI, emulator: BackgroundServer) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="command", messages=[{"role": "user", "content": "x"}], temperature=1.5, top_p=1,
        presence_penalty=-0.5, frequency_penalty=0.3)
    assert raw.parse().choices[0].message.content == "Hello! You said: x"  # Cohere would refuse the originals
    assert raw.headers["x-relaygate-adjusted-params"] == "temperature,top_p,presence_penalty"
    body = sent(emulator)
    assert (body["temperature"], body["p"], body["presence_penalty"], body["frequency_penalty"]) == (1.0, 0.99, 0, 0.3)


def test_parallel_tool_calls_keep_their_own_indexes() -> None:
    """Cohere may call several tools in one turn (the emulator calls one): translated from captured shapes."""
    from relaygate.core.call import Reply
    from relaygate.providers.cohere.answer import ToolArguments, chat_completion, chunks_of, usage_of
    from relaygate.providers.openai_format import ChunkWriter

    def call_events(i: int, name: str, args: str) -> list[dict[str, Any]]:
        return [{"type": "tool-call-start", "index": i, "delta": {"message": {"tool_calls": {
                    "id": f"{name}_{i}", "type": "function", "function": {"name": name, "arguments": ""}}}}},
                {"type": "tool-call-delta", "index": i,
                 "delta": {"message": {"tool_calls": {"function": {"arguments": args}}}}},
                {"type": "tool-call-end", "index": i}]

    events = [{"id": "g1", "type": "message-start", "delta": {"message": {"role": "assistant"}}},
              {"type": "tool-plan-delta", "delta": {"message": {"tool_plan": "Both."}}},
              *call_events(0, "get_weather", '{"city":"Paris"}'), *call_events(1, "get_time", "{}"),
              {"type": "message-end", "delta": {"finish_reason": "TOOL_CALL", "usage": {
                  "billed_units": {"input_tokens": 5, "output_tokens": 9},
                  "tokens": {"input_tokens": 70, "output_tokens": 9}, "cached_tokens": 32}}}]
    w, reply, args = ChunkWriter("m"), Reply(), ToolArguments()
    out = b"".join(chunks_of(ev, reply, w, args) for ev in events)
    chunks = [orjson.loads(line[6:]) for line in out.split(b"\n\n") if line.startswith(b"data: {")]
    calls = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [(tc["index"], tc.get("id")) for tc in calls] == [(0, "get_weather_0"), (0, None), (1, "get_time_1"),
                                                            (1, None)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert reply.usage is not None and (reply.usage.prompt_tokens, reply.usage.cached_tokens) == (70, 32)
    whole = {"id": "g1", "finish_reason": "TOOL_CALL", "message": {"role": "assistant", "tool_plan": "Both.",
             "tool_calls": [{"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
                            {"id": "b", "type": "function", "function": {"name": "get_time"}}]}}
    body = chat_completion(whole, "m", usage_of(None))
    message = body["choices"][0]["message"]
    assert [tc["id"] for tc in message["tool_calls"]] == ["a", "b"] and message["content"] == "Both."
    assert message["tool_calls"][1]["function"]["arguments"] == "{}" and body["usage"] is None


def test_transcriptions_with_the_openai_sdk(client: openai.OpenAI, emulator: BackgroundServer) -> None:
    from relaygate.testing.openai_audio import tone_pcm, wav_bytes

    wav = wav_bytes(tone_pcm(0.2, 440), comment="hello there")
    r = client.audio.transcriptions.with_raw_response.create(model="transcribe", file=("a.wav", wav),
                                                            language="en", prompt="names: Ada")
    assert r.parse().text == "hello there"
    assert r.headers["x-relaygate-dropped-params"] == "prompt"
    assert sent(emulator) == {"model": "cohere-transcribe-03-2026", "language": "en",
                              "file": {"filename": "a.wav", "size": len(wav)}}
    text = client.audio.transcriptions.create(model="transcribe", file=("a.wav", wav), language="en",
                                              response_format="text")
    assert text == "hello there\n"
    for language in (openai.omit, "auto"):  # voice-mode's "auto": Cohere does not detect the language
        with pytest.raises(openai.BadRequestError) as no_language:
            client.audio.transcriptions.create(model="transcribe", file=("a.wav", wav), language=language)
        assert no_language.value.param == "language"
    with pytest.raises(openai.BadRequestError) as verbose:
        client.audio.transcriptions.create(model="transcribe", file=("a.wav", wav), language="en",
                                           response_format="verbose_json")
    assert verbose.value.code == "unsupported"
    fault(emulator, status=429, retry_after=3, count=1)
    with pytest.raises(openai.RateLimitError):
        client.audio.transcriptions.create(model="transcribe", file=("a.wav", wav), language="en")


def test_cohere_native_options_pass_through(client: openai.OpenAI, emulator: BackgroundServer) -> None:
    client.chat.completions.create(model="command", messages=[{"role": "user", "content": "x"}],
                                   reasoning_effort="low",
                                   extra_body={"k": 5, "safety_mode": "STRICT", "thinking": {"type": "disabled"}})
    body = sent(emulator)
    assert (body["k"], body["safety_mode"], body["thinking"]) == (5, "STRICT", {"type": "disabled"})


def test_text_file_parts_become_cohere_documents(client: openai.OpenAI, emulator: BackgroundServer) -> None:
    notes = "data:text/plain;base64," + base64.b64encode(b"Ada wrote the first program.").decode()
    r = client.chat.completions.create(model="command", messages=[{"role": "user", "content": [
        {"type": "text", "text": "who wrote it?"},
        {"type": "file", "file": {"filename": "notes.txt", "file_data": notes}}]}])
    assert r.choices[0].message.content == "Hello! You said: who wrote it? [documents: notes.txt]"
    body = sent(emulator)
    assert body["documents"] == [{"id": "doc_0", "data": {"title": "notes.txt",
                                                          "snippet": "Ada wrote the first program."}}]
    assert body["messages"][0]["content"] == [{"type": "text", "text": "who wrote it?"}]
    chunks = list(client.chat.completions.create(model="command", stream=True, messages=[{"role": "user", "content": [
        {"type": "text", "text": "who wrote it?"},
        {"type": "file", "file": {"filename": "notes.txt", "file_data": notes}}]}]))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == r.choices[0].message.content  # citation events are skipped, not misread
    pdf = "data:application/pdf;base64," + base64.b64encode(b"%PDF-1.4").decode()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="command", messages=[{"role": "user", "content": [
            {"type": "file", "file": {"filename": "a.pdf", "file_data": pdf}}]}])
    assert e.value.code == "unsupported" and "text documents only" in e.value.message


def test_buffered_transcription_upload_is_sent_with_its_length(client: openai.OpenAI,
                                                               emulator: BackgroundServer) -> None:
    from relaygate.testing.openai_audio import tone_pcm, wav_bytes

    wav = wav_bytes(tone_pcm(0.2, 440), comment="hello there")
    for model, chunked in (("transcribe", True), ("transcribe-buffered", False)):
        r = client.audio.transcriptions.create(model=model, file=("a.wav", wav), language="en", prompt="x")
        assert r.text == "hello there"
        seen = httpx.get(emulator.url + "/_emulator/requests").json()["requests"][-1]
        assert ("content-length" not in seen["headers"]) is chunked
        assert seen["json"] == {"model": "cohere-transcribe-03-2026", "language": "en",
                                "file": {"filename": "a.wav", "size": len(wav)}}


def test_client_leaving_mid_stream_stops_the_cohere_generation(gateway: GatewayThread,
                                                               emulator: BackgroundServer) -> None:
    from relaygate.testing.base import FaultPlan

    emulator.state.cancelled = 0
    emulator.state.faults = FaultPlan(chunk_delay_ms=200, count=1)
    try:
        with httpx.stream("POST", gateway.base_url + "/chat/completions", timeout=10, json={
                "model": "command", "stream": True, "messages": [{"role": "user", "content": "a b c d e f"}]}) as r:
            first = next(r.iter_lines())
            assert first.startswith("data: {")
        deadline = time.monotonic() + 3  # the gateway closed its upstream connection at once
        while emulator.state.cancelled == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert emulator.state.cancelled == 1 and emulator.state.in_flight == 0
    finally:
        emulator.state.faults = None
