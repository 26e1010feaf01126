"""The Gemini emulator against Google's own SDK (google-genai): the oracle for its wire format."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from google import genai
from google.genai import errors, types
from google.oauth2.credentials import Credentials

from relaygate.testing.base import BackgroundServer
from relaygate.testing.gemini import GeminiEmulatorOptions, create_app

KEY = "AIzaSyEmulatorKey0123456789abcdefghijk"
TOKEN = "ya29.emulator-token"


@pytest.fixture(scope="module")
def emulator() -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(GeminiEmulatorOptions(api_key=KEY, bearer_token=TOKEN))) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _reset(emulator: BackgroundServer) -> None:
    requests.delete(emulator.url + "/_emulator/faults", timeout=5)


# bind clients to a name while used: a client closes its connections once garbage-collected
def studio(emulator: BackgroundServer, key: str = KEY) -> genai.Client:
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=emulator.url))


def vertex(emulator: BackgroundServer, token: str = TOKEN) -> genai.Client:
    return genai.Client(vertexai=True, project="proj", location="us-central1", credentials=Credentials(token=token),
                        http_options=types.HttpOptions(base_url=emulator.url, api_version="v1"))


def test_sdk_parses_a_whole_answer_with_usage(emulator: BackgroundServer) -> None:
    c = studio(emulator)
    r = c.models.generate_content(
        model="gemini-2.5-flash", contents="hi there",
        config=types.GenerateContentConfig(system_instruction="be nice", temperature=0.5))
    assert r.text == "Hello! You said: hi there [system: be nice]"
    assert r.candidates and r.candidates[0].finish_reason == types.FinishReason.STOP
    assert r.usage_metadata and r.usage_metadata.prompt_token_count == 8
    assert r.usage_metadata.candidates_token_count == 8 and r.usage_metadata.total_token_count == 16


def test_sdk_parses_a_stream_chunk_by_chunk(emulator: BackgroundServer) -> None:
    c = studio(emulator)
    chunks = list(c.models.generate_content_stream(
        model="gemini-2.5-flash", contents="one two three four five"))
    assert len(chunks) >= 3
    assert "".join(c.text or "" for c in chunks) == "Hello! You said: one two three four five"
    assert chunks[-1].candidates and chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP


def test_sdk_automatic_function_calling_round_trips_ids_and_signatures(emulator: BackgroundServer) -> None:
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    c = studio(emulator)
    r = c.models.generate_content(
        model="gemini-3-pro-preview", contents="Paris", config=types.GenerateContentConfig(tools=[get_weather]))
    assert r.text == 'The tool returned: get_weather={"result":"sunny in Paris"}'
    history = r.automatic_function_calling_history or []
    call = history[1].parts[0]  # type: ignore[index]
    assert call.function_call and call.function_call.id and call.thought_signature


def test_sdk_sees_images_blocks_and_safety_stops(emulator: BackgroundServer) -> None:
    c = studio(emulator)
    r = c.models.generate_content(model="gemini-2.5-flash", contents=[
        "look", types.Part.from_bytes(data=b"\x89PNG", mime_type="image/png")])
    assert r.text == "Hello! You said: look (I see 1 image: image/png)"
    blocked = c.models.generate_content(model="gemini-2.5-flash", contents="about forbidden-topic")
    assert blocked.prompt_feedback and blocked.prompt_feedback.block_reason == types.BlockedReason.SAFETY
    assert not blocked.candidates
    unsafe = c.models.generate_content(model="gemini-2.5-flash", contents="say unsafe-output")
    cand = unsafe.candidates[0]  # type: ignore[index]
    assert cand.finish_reason == types.FinishReason.SAFETY
    assert any(r.blocked for r in cand.safety_ratings or [])


def test_sdk_counts_tokens(emulator: BackgroundServer) -> None:
    c = studio(emulator)
    assert c.models.count_tokens(model="gemini-2.5-flash", contents="one two three").total_tokens == 7


def test_sdk_embeds_in_batches_with_dimensions(emulator: BackgroundServer) -> None:
    c = studio(emulator)
    e = c.models.embed_content(model="text-embedding-004", contents=["a", "b"],
                                              config=types.EmbedContentConfig(output_dimensionality=8))
    vectors = [x.values for x in e.embeddings or []]
    assert len(vectors) == 2 and all(v and len(v) == 8 for v in vectors) and vectors[0] != vectors[1]


@pytest.mark.parametrize(("plan", "code", "status"), [
    ({"status": 429, "retry_after": 7}, 429, "RESOURCE_EXHAUSTED"),
    ({"status": 503}, 503, "UNAVAILABLE"),
    ({"status": 403}, 403, "PERMISSION_DENIED"),
    ({"status": 400}, 400, "INVALID_ARGUMENT"),
])
def test_sdk_reads_google_error_bodies(emulator: BackgroundServer, plan: dict, code: int, status: str) -> None:  # type: ignore[type-arg]
    requests.post(emulator.url + "/_emulator/faults", json={**plan, "count": 1}, timeout=5).raise_for_status()
    with pytest.raises(errors.APIError) as e:
        c = studio(emulator)
        c.models.generate_content(model="gemini-2.5-flash", contents="x")
    assert e.value.code == code and e.value.status == status
    if code == 429:
        assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"} in \
            e.value.details["error"]["details"]


def test_sdk_reads_an_error_event_in_a_stream(emulator: BackgroundServer) -> None:
    requests.post(emulator.url + "/_emulator/faults", json={"status": 503, "disconnect_after_chunks": 1, "count": 1},
                  timeout=5).raise_for_status()
    c = studio(emulator)
    seen = []
    with pytest.raises(errors.ServerError) as e:
        for chunk in c.models.generate_content_stream(model="gemini-2.5-flash", contents="a b c d e f"):
            seen.append(chunk.text)
    assert seen == ["Hello! You said: "] and e.value.code == 503 and e.value.status == "UNAVAILABLE"


def test_sdk_sees_auth_and_model_errors(emulator: BackgroundServer) -> None:
    with pytest.raises(errors.ClientError) as e:
        c = studio(emulator, "AIzaSyWrong")
        c.models.generate_content(model="gemini-2.5-flash", contents="x")
    assert e.value.code == 400 and e.value.message == "API key not valid. Please pass a valid API key."
    with pytest.raises(errors.ClientError) as e:
        c = studio(emulator)
        c.models.generate_content(model="no-such-model", contents="x")
    assert e.value.code == 404 and e.value.status == "NOT_FOUND"
    with pytest.raises(errors.ClientError) as e:
        c = vertex(emulator, "ya29.expired")
        c.models.generate_content(model="gemini-2.5-flash", contents="x")
    assert e.value.code == 401 and e.value.status == "UNAUTHENTICATED"


def test_sdk_speaks_the_vertex_form(emulator: BackgroundServer) -> None:
    v = vertex(emulator)
    assert v.models.generate_content(model="gemini-2.5-flash", contents="vertex hi").text == \
        "Hello! You said: vertex hi"
    chunks = list(v.models.generate_content_stream(model="gemini-2.5-flash", contents="vertex stream"))
    assert "".join(c.text or "" for c in chunks) == "Hello! You said: vertex stream"
    reqs = requests.get(emulator.url + "/_emulator/requests", timeout=5).json()["requests"]
    assert reqs[-1]["path"] == ("/v1/projects/proj/locations/us-central1/publishers/google/models/"
                                "gemini-2.5-flash:streamGenerateContent")
    assert reqs[-1]["headers"]["authorization"] == f"Bearer {TOKEN}"


def test_strict_checks_reject_what_the_real_api_rejects(emulator: BackgroundServer) -> None:
    def post(body: dict) -> requests.Response:  # type: ignore[type-arg]
        return requests.post(emulator.url + "/v1beta/models/gemini-2.5-flash:generateContent", json=body,
                             headers={"x-goog-api-key": KEY}, timeout=5)

    user = {"role": "user", "parts": [{"text": "hi"}]}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"contents": [user], "max_tokens": 5}, 'Unknown name "max_tokens"'),
        ({"contents": [user], "generationConfig": {"max_tokens": 5}}, "Unknown name"),
        ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "valid role"),
        ({"contents": [{"role": "user", "parts": []}]}, "must not be empty"),
        ({"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": "%%"}}]}]},
         "Base64"),
        ({"contents": [user, {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]},
                       {"role": "user", "parts": [{"text": "no result"}]}]}, "number of function response"),
        ({"contents": [user, {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}, "id": "a"}}]},
                       {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}, "id": "b"}}]}]},
         "does not match"),
        ({"contents": [user], "generationConfig": {"thinkingConfig": {"thinkingLevel": "low"}}},
         "not supported for this model"),
    ]
    for body, message in cases:
        r = post(body)
        assert r.status_code == 400 and message in r.json()["error"]["message"], body
        assert r.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert post({"contents": [user], "generation_config": {"max_output_tokens": 2}}).status_code == 200
