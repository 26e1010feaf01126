"""The google-genai SDK → relaygate's /v1beta/models/…:generateContent → any configured model (OpenAI,
Gemini, Anthropic emulators): translated cells, the Gemini-to-Gemini relay, keys, errors in Google's shape."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import requests
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from relaygate.testing import anthropic as anthropic_emu
from relaygate.testing import gemini as gemini_emu
from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import GatewayThread
from relaygate.testing.openai import OpenAIEmulatorOptions
from relaygate.testing.openai import create_app as create_openai_app

from .conftest import UPSTREAM_KEY, openai_model
from .test_requestlog import log_rows

GEMINI_KEY = "AIzaSyGeminiUpstream7d3b9e1c5a2f8d4b6e0c"
CLAUDE_KEY = "sk-ant-upstream-9f2c6a1e8d4b7f3a5c0e"
MASTER = "rg-master-gemini-0123456789abcdef"
APP_KEY = "rg-gemini-app-7f3a9c1e5b2d8f40a6c3e1b9"
BUDGET_KEY = "rg-gemini-budget-2c8f4a6e1b9d3f7a5c0e"
APP_KEY_CACHED = "rg-gemini-cached-6d1f9b3e7a2c5d8f0b4a"
WEATHER = types.Tool(function_declarations=[types.FunctionDeclaration(
    name="get_weather", description="weather for a city",
    parameters=types.Schema(type=types.Type.OBJECT, properties={"city": types.Schema(type=types.Type.STRING)},
                            required=["city"]))])
NO_AUTO = types.AutomaticFunctionCallingConfig(disable=True)
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, BackgroundServer]]:
    with BackgroundServer(create_openai_app(OpenAIEmulatorOptions(api_key=UPSTREAM_KEY))) as oai, \
            BackgroundServer(gemini_emu.create_app(gemini_emu.GeminiEmulatorOptions(api_key=GEMINI_KEY))) as gem, \
            BackgroundServer(anthropic_emu.create_app(
                anthropic_emu.AnthropicEmulatorOptions(api_key=CLAUDE_KEY))) as claude:
        yield {"openai": oai, "gemini": gem, "anthropic": claude}


@pytest.fixture(scope="module")
def gw(upstreams: dict[str, BackgroundServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    config = {"models": [
        openai_model("gpt", upstreams["openai"]),
        {"name": "gem", "deployments": [{"provider": "gemini", "model": "gemini-2.5-flash",
                                         "api_base": upstreams["gemini"].url, "api_key": GEMINI_KEY}]},
        {"name": "claude", "deployments": [{"provider": "anthropic", "model": "claude-haiku-4-5",
                                            "api_base": upstreams["anthropic"].url, "api_key": CLAUDE_KEY}]},
        openai_model("oai-embed", upstreams["openai"], upstream_model="text-embedding-3-small"),
        {**openai_model("gpt-cached", upstreams["openai"]), "cache": {"mode": "always"}},
        # another model condenses: the condense layer is in the pipeline, and must leave native calls untranslated
        {**openai_model("gpt-condensed", upstreams["openai"]), "condense": {"context_window": 100_000}},
        {"name": "gem-embed", "deployments": [{"provider": "gemini", "model": "gemini-embedding-001",
                                               "api_base": upstreams["gemini"].url, "api_key": GEMINI_KEY}]},
        {"name": "gem-fb", "fallbacks": [{"models": ["gpt"]}],
         "deployments": [{"provider": "gemini", "model": "gemini-2.5-flash", "api_base": upstreams["gemini"].url,
                          "api_key": GEMINI_KEY}]},
    ], "database": {"url": f"sqlite:///{tmp_path_factory.mktemp('gemini')}/relaygate.db"},
        "auth": {"master_key": MASTER, "keys": [{"id": "gemini-app", "key": APP_KEY, "models": ["gpt", "gem"]},
                                                 {"id": "gemini-cached", "key": APP_KEY_CACHED},
                                                 {"id": "gemini-budget", "key": BUDGET_KEY, "budget_usd": 0.0006,
                                                  "budget_period": "day"}]}}
    with GatewayThread(config) as g:
        yield g


@pytest.fixture(autouse=True)
def fresh(upstreams: dict[str, BackgroundServer]) -> None:
    for emu in upstreams.values():
        emu.state.faults = None
        emu.state.requests.clear()


@pytest.fixture
def client(gw: GatewayThread) -> genai.Client:
    return genai.Client(api_key=APP_KEY, http_options=types.HttpOptions(base_url=gw.url, timeout=10_000))


def sent(upstreams: dict[str, BackgroundServer], kind: str) -> dict[str, Any]:
    return upstreams[kind].state.requests[-1]["json"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("model", ["gpt", "gem"])
def test_generate_content_answers_in_geminis_shape_with_an_id_of_its_own(
        client: genai.Client, upstreams: dict[str, BackgroundServer], model: str) -> None:
    r = client.models.generate_content(model=model, contents="hi there", config=types.GenerateContentConfig(
        system_instruction="be nice", max_output_tokens=50, temperature=0.2))
    assert r.text is not None and "hi there" in r.text
    assert r.candidates is not None and r.candidates[0].finish_reason == types.FinishReason.STOP
    assert r.usage_metadata is not None and r.usage_metadata.prompt_token_count
    assert r.usage_metadata.candidates_token_count
    if model == "gpt":
        body = sent(upstreams, "openai")
        assert body["messages"][0] == {"role": "system", "content": "be nice"}
        assert body["max_completion_tokens"] == 50 and body["temperature"] == 0.2
        assert r.response_id and not r.response_id.startswith("chatcmpl")
    else:  # the same dialect: the body went as the client sent it
        body = sent(upstreams, "gemini")
        assert body["systemInstruction"] == {"parts": [{"text": "be nice"}], "role": "user"}
        assert body["generationConfig"] == {"maxOutputTokens": 50, "temperature": 0.2}


def test_a_gemini_deployment_gets_the_clients_body_untouched(
        gw: GatewayThread, upstreams: dict[str, BackgroundServer], client: genai.Client) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}],
            "safetySettings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "threshold": "BLOCK_NONE"}],
            "generationConfig": {"topK": 3, "maxOutputTokens": 40}}
    r = requests.post(gw.url + "/v1beta/models/gem:generateContent", json=body, timeout=10,
                      headers={"x-goog-api-key": APP_KEY})
    assert r.status_code == 200, r.text
    assert sent(upstreams, "gemini") == body
    assert r.json()["candidates"][0]["content"]["parts"][0]["text"].endswith("hello")


@pytest.mark.parametrize("model", ["gpt", "gem", "claude"])
def test_stream_generate_content_streams_text_and_ends_with_usage(
        gw: GatewayThread, client: genai.Client, model: str) -> None:
    if model == "claude":  # a key that may not use it: the master key may
        client = genai.Client(api_key=MASTER, http_options=types.HttpOptions(base_url=gw.url, timeout=10_000))
    chunks = list(client.models.generate_content_stream(model=model, contents="stream this please"))
    assert "stream this please" in "".join(c.text or "" for c in chunks)
    last = chunks[-1]
    assert last.candidates is not None and last.candidates[0].finish_reason == types.FinishReason.STOP
    assert last.usage_metadata is not None and last.usage_metadata.total_token_count


@pytest.mark.parametrize("model", ["gpt", "gem"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_function_call_round_trip(client: genai.Client, model: str, stream: bool) -> None:
    config = types.GenerateContentConfig(tools=[WEATHER], automatic_function_calling=NO_AUTO)
    ask = types.Content(role="user", parts=[types.Part(text="weather in Paris?")])
    if stream:
        chunks = list(client.models.generate_content_stream(model=model, contents=[ask], config=config))
        calls = [fc for c in chunks for fc in c.function_calls or ()]
        turn = types.Content(role="model", parts=[types.Part(function_call=fc) for fc in calls])
    else:
        r = client.models.generate_content(model=model, contents=[ask], config=config)
        calls = r.function_calls or []
        assert r.candidates is not None and r.candidates[0].content is not None
        turn = r.candidates[0].content
    assert [c.name for c in calls] == ["get_weather"] and calls[0].args and "city" in calls[0].args
    answer = types.Content(role="user", parts=[types.Part.from_function_response(
        name="get_weather", response={"temperature": 21})])
    r2 = client.models.generate_content(model=model, contents=[ask, turn, answer], config=config)
    assert r2.text is not None and "21" in r2.text


def test_images_reach_an_openai_model_as_image_parts(
        client: genai.Client, upstreams: dict[str, BackgroundServer]) -> None:
    r = client.models.generate_content(model="gpt", contents=[types.Content(role="user", parts=[
        types.Part(text="what is this"), types.Part.from_bytes(data=base64.b64decode(PNG), mime_type="image/png")])])
    assert r.text
    [user] = sent(upstreams, "openai")["messages"]
    assert user["content"][1] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}


def test_generation_config_maps_to_chat_fields_and_names_what_it_dropped(
        gw: GatewayThread, upstreams: dict[str, BackgroundServer], client: genai.Client) -> None:
    body = {"contents": [{"parts": [{"text": "json please"}]}], "generationConfig": {
        "topP": 0.5, "topK": 4, "stopSequences": ["END"], "candidateCount": 1, "seed": 7,
        "responseMimeType": "application/json",
        "responseSchema": {"type": "OBJECT", "properties": {"answer": {"type": "STRING", "nullable": True}}},
        "thinkingConfig": {"thinkingBudget": 1024}},
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}},
        "tools": [{"functionDeclarations": [{"name": "f"}]}, {"googleSearch": {}}]}
    r = requests.post(gw.url + "/v1beta/models/gpt:generateContent", json=body, timeout=10,
                      headers={"x-goog-api-key": APP_KEY})
    assert r.status_code == 200, r.text
    assert r.headers["x-relaygate-dropped-params"] == "tools.googleSearch,generationConfig.topK"
    req = sent(upstreams, "openai")
    assert req["top_p"] == 0.5 and req["stop"] == ["END"] and req["n"] == 1 and req["seed"] == 7
    assert req["reasoning_effort"] == "low"
    assert req["response_format"]["json_schema"]["schema"] == {
        "type": "object", "properties": {"answer": {"type": ["string", "null"]}}}
    assert req["tool_choice"] == {"type": "function", "function": {"name": "f"}}


def test_the_key_may_come_as_a_query_parameter(gw: GatewayThread) -> None:
    r = requests.post(gw.url + f"/v1beta/models/gpt:generateContent?key={APP_KEY}", timeout=10,
                      json={"contents": [{"parts": [{"text": "hi"}]}]})
    assert r.status_code == 200, r.text


def test_errors_come_in_googles_shape(gw: GatewayThread, client: genai.Client) -> None:
    r = requests.post(gw.url + "/v1beta/models/gpt:generateContent", json={"contents": []}, timeout=10,
                      headers={"x-goog-api-key": APP_KEY})
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert set(r.json()["error"]) == {"code", "message", "status"}
    r = requests.post(gw.url + "/v1beta/models/gpt:generateContent", json={"contents": []}, timeout=10,
                      headers={"x-goog-api-key": "rg-wrong"})
    assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED"
    with pytest.raises(genai_errors.ClientError) as e:  # a model the key may not use
        client.models.generate_content(model="claude", contents="hi")
    assert e.value.code == 403 and e.value.status == "PERMISSION_DENIED"
    r = requests.post(gw.url + "/v1beta/models/gpt:embedText", json={}, timeout=10, headers={"x-goog-api-key": APP_KEY})
    assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"


def test_a_failing_gemini_deployment_falls_back_to_another_kind(
        gw: GatewayThread, upstreams: dict[str, BackgroundServer]) -> None:
    requests.post(upstreams["gemini"].url + "/_emulator/faults", json={"status": 503}, timeout=5).raise_for_status()
    client = genai.Client(api_key=MASTER, http_options=types.HttpOptions(base_url=gw.url, timeout=10_000))
    r = client.models.generate_content(model="gem-fb", contents="still there?")
    assert r.text is not None and "still there?" in r.text
    assert r.sdk_http_response is not None and r.sdk_http_response.headers is not None
    assert r.sdk_http_response.headers["x-relaygate-deployment"] == "gpt/openai/0"


def test_stream_without_alt_sse_is_one_json_array(gw: GatewayThread) -> None:
    for model in ("gpt", "gem"):
        r = requests.post(gw.url + f"/v1beta/models/{model}:streamGenerateContent", timeout=10,
                          json={"contents": [{"parts": [{"text": "array please"}]}]},
                          headers={"x-goog-api-key": APP_KEY})
        assert r.status_code == 200, r.text
        events = orjson.loads(r.content)
        assert isinstance(events, list) and events[-1]["usageMetadata"]["totalTokenCount"] > 0
        assert "array please" in "".join(p.get("text", "") for e in events
                                         for p in e["candidates"][0]["content"]["parts"])


def test_count_tokens_counts_the_prompt_of_a_model_the_key_may_use(client: genai.Client) -> None:
    r = client.models.count_tokens(model="gpt", contents="how many tokens is this")
    longer = client.models.count_tokens(model="gpt", contents="how many tokens is this much longer prompt " * 20)
    assert r.total_tokens is not None and longer.total_tokens is not None and 0 < r.total_tokens < longer.total_tokens
    for model, status in (("claude", 403), ("no-such-model", 404)):
        with pytest.raises(genai_errors.ClientError) as e:
            client.models.count_tokens(model=model, contents="hi")
        assert e.value.code == status


def test_a_budget_holds_a_gemini_deployment_to_what_it_can_pay_in_the_clients_own_field(
        gw: GatewayThread, upstreams: dict[str, BackgroundServer]) -> None:
    r = requests.post(gw.url + "/v1beta/models/gem:generateContent", timeout=10, headers={"x-goog-api-key": BUDGET_KEY},
                      json={"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 50_000}})
    assert r.status_code == 200, r.text
    cap = int(r.headers["x-relaygate-output-cap"])
    assert 0 < cap < 50_000
    assert sent(upstreams, "gemini")["generationConfig"]["maxOutputTokens"] == cap


@pytest.mark.parametrize("model", ["gem-embed", "oai-embed"])
def test_embed_content_embeds_texts_on_any_embeddings_model(
        gw: GatewayThread, upstreams: dict[str, BackgroundServer], model: str) -> None:
    client = genai.Client(api_key=MASTER, http_options=types.HttpOptions(base_url=gw.url, timeout=10_000))
    r = client.models.embed_content(model=model, contents=["one", "two"],
                                    config=types.EmbedContentConfig(task_type="RETRIEVAL_QUERY"))
    assert r.embeddings is not None and len(r.embeddings) == 2
    assert r.embeddings[0].values and r.embeddings[0].values != r.embeddings[1].values
    if model == "gem-embed":  # Gemini reads the task type; an OpenAI-compatible server would refuse it
        [req] = sent(upstreams, "gemini")["requests"][:1]
        assert req["taskType"] == "RETRIEVAL_QUERY" and req["content"] == {"parts": [{"text": "one"}]}
    else:
        assert sent(upstreams, "openai") == {"model": "text-embedding-3-small", "input": ["one", "two"],
                                             "encoding_format": "float"}
    one = requests.post(gw.url + f"/v1beta/models/{model}:embedContent", headers={"x-goog-api-key": MASTER},
                        json={"content": {"parts": [{"text": "one"}]}, "taskType": "RETRIEVAL_QUERY"}, timeout=10)
    assert one.status_code == 200 and one.json()["embedding"]["values"] == r.embeddings[0].values


def test_the_cache_and_the_request_log_serve_gemini_clients_as_chat_ones(
        gw: GatewayThread, upstreams: dict[str, BackgroundServer]) -> None:
    body = {"contents": [{"parts": [{"text": "cache me"}]}]}
    url, headers = gw.url + "/v1beta/models/gpt-cached:", {"x-goog-api-key": APP_KEY_CACHED}
    first = requests.post(url + "generateContent", json=body, headers=headers, timeout=10)
    second = requests.post(url + "generateContent", json=body, headers=headers, timeout=10)
    streamed = requests.post(url + "streamGenerateContent?alt=sse", json=body, headers=headers, timeout=10)
    assert [r.headers["x-relaygate-cache"] for r in (first, second, streamed)] == ["miss", "hit", "hit"]
    assert second.json()["candidates"] == first.json()["candidates"]
    assert second.json()["responseId"] != first.json()["responseId"]  # ids of its own, even on a hit
    assert "cache me" in streamed.text and streamed.text.startswith("data: ")
    assert len(upstreams["openai"].state.requests) == 1
    writer = gw.gateway.writer
    rows: list[dict[str, Any]] = []
    for _ in range(100):  # the rows are queued once the answers were sent
        assert writer.flush(10)
        rows = [r for r in log_rows(gw.config.database.url) if r["key_id"] == "cfg_gemini-cached"]
        if len(rows) == 3:
            break
        time.sleep(0.05)
    assert [(r["model"], r["status"], r["cache_hit"], r["stream"]) for r in rows] == [
        ("gpt-cached", 200, False, False), ("gpt-cached", 200, True, False), ("gpt-cached", 200, True, True)]
    assert rows[0]["prompt_tokens"] and rows[0]["completion_tokens"] and rows[0]["cost_nano"] > 0


def test_the_same_dialect_sends_a_body_only_the_translation_would_refuse(
        gw: GatewayThread, upstreams: dict[str, BackgroundServer]) -> None:
    """The fast path does not translate: a body the translation to chat refuses (audio, which only Gemini
    reads) reaches a Gemini deployment as it came; to an OpenAI model it is refused in Google's shape."""
    body = {"contents": [{"role": "user", "parts": [
        {"text": "hi"}, {"inlineData": {"mimeType": "audio/wav", "data": "UklGRgAAAABXQVZF"}}]}]}
    r = requests.post(gw.url + "/v1beta/models/gem:generateContent", json=body, timeout=10,
                      headers={"x-goog-api-key": APP_KEY})
    assert r.status_code == 200, r.text
    assert sent(upstreams, "gemini") == body
    r = requests.post(gw.url + "/v1beta/models/gpt:generateContent", json=body, timeout=10,
                      headers={"x-goog-api-key": APP_KEY})
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT", r.text
    assert not upstreams["openai"].state.requests
