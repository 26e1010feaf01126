"""Translation edge cases met in real answers: tool calls without arguments, Cohere's ``null`` arguments,
Gemini's failed and late finish reasons, ids of the client's own kind, context-length phrases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import orjson
import pytest
from pydantic import BaseModel

from relaygate.core.errors import says_context_too_long
from relaygate.providers.aws.base import map_error
from relaygate.providers.cohere.provider import error_for
from relaygate.testing.anthropic import AnthropicEmulatorOptions
from relaygate.testing.anthropic import create_app as anthropic_app
from relaygate.testing.base import BackgroundServer
from relaygate.testing.bedrock import TEST_ACCESS_KEY, TEST_SECRET_KEY, BedrockEmulatorOptions
from relaygate.testing.bedrock import create_app as bedrock_app
from relaygate.testing.cohere import CohereEmulatorOptions
from relaygate.testing.cohere import create_app as cohere_app
from relaygate.testing.gateway import GatewayThread
from relaygate.testing.gemini import GeminiEmulatorOptions
from relaygate.testing.gemini import create_app as gemini_app
from tests.openai_types import function_calls
from tests.test_recorded_answers import Answer, replay_app

ANTHROPIC_KEY = "sk-ant-api03-upstream-secret-0123456789"
COHERE_KEY = "co-upstream-secret-0123456789abcdef"
GEMINI_KEY = "AIzaSyTestKey0123456789abcdefghijklmnop"


class ClearAll(BaseModel):
    """Clear every item (takes no arguments)."""


UPSTREAMS = {"anthropic": ("claude-sonnet-4-6", ANTHROPIC_KEY), "cohere": ("command-a-03-2025", COHERE_KEY),
             "gemini": ("gemini-2.5-flash", GEMINI_KEY)}


def model(provider: str, url: str) -> dict[str, Any]:
    """A ``models`` entry named for its provider, served at ``url``."""
    name, key = UPSTREAMS[provider]
    return {"name": provider, "deployments": [{"provider": provider, "model": name, "api_base": url, "api_key": key}]}


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayThread]:
    with BackgroundServer(anthropic_app(AnthropicEmulatorOptions(api_key=ANTHROPIC_KEY))) as a, \
            BackgroundServer(bedrock_app(BedrockEmulatorOptions(region="us-east-1"))) as b, \
            BackgroundServer(cohere_app(CohereEmulatorOptions(api_key=COHERE_KEY))) as c, \
            BackgroundServer(gemini_app(GeminiEmulatorOptions(api_key=GEMINI_KEY))) as g:
        models = [model("anthropic", a.url), model("cohere", c.url), model("gemini", g.url),
                  {"name": "bedrock", "deployments": [{
                      "provider": "bedrock", "model": "anthropic.claude-3-5-sonnet-20240620-v1:0", "api_base": b.url,
                      "region": "us-east-1", "aws_access_key_id": TEST_ACCESS_KEY,
                      "aws_secret_access_key": TEST_SECRET_KEY}]}]
        with GatewayThread({"models": models}) as gw:
            yield gw


def client(gw: GatewayThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=20)


@pytest.mark.parametrize("model", ["anthropic", "bedrock", "cohere", "gemini"])
def test_streamed_tool_call_without_arguments_parses_with_the_sdk_stream_helper(
        gateway: GatewayThread, model: str) -> None:
    """Real upstreams stream no argument text for such a call; OpenAI streams "{}", and the openai SDK's
    ``stream()`` helper fails to parse a pydantic tool's ``""``."""
    with client(gateway).chat.completions.stream(
            model=model, messages=[{"role": "user", "content": "clear everything"}],
            tools=[openai.pydantic_function_tool(ClearAll)], tool_choice="required") as s:
        events = [e.type for e in s]
        final = s.get_final_completion()
    call = (final.choices[0].message.tool_calls or [])[0]
    assert call.function.name == "ClearAll" and call.function.arguments == "{}"
    assert call.function.parsed_arguments == ClearAll()
    assert "tool_calls.function.arguments.done" in events
    assert final.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("model", ["anthropic", "bedrock", "cohere", "gemini"])
def test_whole_tool_call_without_arguments_has_an_empty_object(gateway: GatewayThread, model: str) -> None:
    r = client(gateway).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "clear everything"}],
        tools=[openai.pydantic_function_tool(ClearAll)], tool_choice="required")
    assert function_calls(r.choices[0].message)[0].function.arguments == "{}"


# ---- answers served as recorded shapes (a small upstream that answers what the test gives it) ----------

@pytest.fixture(scope="module")
def answer() -> Answer:
    return Answer()


@pytest.fixture(scope="module")
def replay(answer: Answer) -> Iterator[GatewayThread]:
    with BackgroundServer(replay_app(answer)) as upstream:
        models = [model(name, upstream.url) for name in ("gemini", "cohere", "anthropic")]
        with GatewayThread({"models": models}) as gw:
            yield gw


def gemini_sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(e) + b"\r\n\r\n" for e in events)


def candidate(
        text: str | None = None, finish: str | None = None, message: str | None = None) -> dict[str, Any]:
    cand: dict[str, Any] = {"index": 0, "content": {"role": "model", "parts": [{"text": text}] if text else []}}
    if finish:
        cand["finishReason"] = finish
    if message:
        cand["finishMessage"] = message
    return {"candidates": [cand], "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2},
            "modelVersion": "gemini-2.5-flash", "responseId": "r-1"}


INTERNAL = "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting"


def serve(answer: Answer, body: bytes, content_type: str = "application/json", split: int = 0) -> None:
    answer.body, answer.status, answer.content_type, answer.split = body, 200, content_type, split


def test_gemini_other_finish_is_an_upstream_error_not_an_empty_success(replay: GatewayThread,
                                                                          answer: Answer) -> None:
    serve(answer, orjson.dumps(candidate(finish="OTHER", message=INTERNAL)))
    with pytest.raises(openai.APIStatusError) as err:
        client(replay).chat.completions.create(model="gemini", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 502 and "internal error" in str(err.value.message)


def test_gemini_stream_that_fails_at_once_errors_before_the_first_byte(replay: GatewayThread,
                                                                        answer: Answer) -> None:
    serve(answer, gemini_sse(candidate(finish="OTHER", message=INTERNAL)), "text/event-stream")
    with pytest.raises(openai.APIStatusError) as err:
        client(replay).chat.completions.create(model="gemini", messages=[{"role": "user", "content": "hi"}],
                                               stream=True)
    assert err.value.status_code == 502


def test_gemini_stream_that_fails_after_text_ends_with_an_error_event(replay: GatewayThread,
                                                                       answer: Answer) -> None:
    serve(answer, gemini_sse(candidate("Once upon"), candidate(" a time", finish="OTHER", message=INTERNAL)),
          "text/event-stream")
    texts: list[str] = []
    with pytest.raises(openai.APIError) as err:
        for chunk in client(replay).chat.completions.create(
                model="gemini", messages=[{"role": "user", "content": "hi"}], stream=True):
            assert not (chunk.choices and chunk.choices[0].finish_reason)  # never a finish that looks fine
            texts += [chunk.choices[0].delta.content or ""] if chunk.choices else []
    assert "".join(texts).startswith("Once upon") and "internal error" in str(err.value.message)


def test_gemini_finish_reason_is_sent_once_at_the_end_and_the_last_one_wins(replay: GatewayThread,
                                                                           answer: Answer) -> None:
    serve(answer, gemini_sse(candidate("To be", finish="STOP"), candidate(" or not", finish="RECITATION")),
          "text/event-stream", split=5)
    chunks = list(client(replay).chat.completions.create(
        model="gemini", messages=[{"role": "user", "content": "hi"}], stream=True))
    finishes = [(i, c.choices[0].finish_reason) for i, c in enumerate(chunks) if c.choices
                and c.choices[0].finish_reason]
    assert finishes == [(len(chunks) - 1, "content_filter")]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "To be or not"


@pytest.mark.parametrize(("reason", "finish"), [("STOP", "stop"), ("MAX_TOKENS", "length"),
                                                ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
                                                ("LANGUAGE", "content_filter"), ("SPII", "content_filter"),
                                                ("MODEL_ARMOR", "content_filter"), ("BLOCKLIST", "content_filter")])
def test_gemini_finish_reasons_map_to_openai(replay: GatewayThread, answer: Answer, reason: str,
                                             finish: str) -> None:
    serve(answer, orjson.dumps(candidate("x", finish=reason)))
    r = client(replay).chat.completions.create(model="gemini", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].finish_reason == finish


@pytest.mark.parametrize(("reason", "status"), [("MALFORMED_FUNCTION_CALL", 502), ("UNEXPECTED_TOOL_CALL", 502),
                                                ("TOO_MANY_TOOL_CALLS", 502), ("IMAGE_OTHER", 502),
                                                ("MISSING_THOUGHT_SIGNATURE", 400)])
def test_gemini_failed_generations_are_errors(replay: GatewayThread, answer: Answer, reason: str,
                                              status: int) -> None:
    serve(answer, orjson.dumps(candidate(finish=reason, message="details")))
    with pytest.raises(openai.APIStatusError) as err:
        client(replay).chat.completions.create(model="gemini", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == status


COHERE_NULL_ARGS = {"id": "316f0604", "finish_reason": "TOOL_CALL", "message": {
    "role": "assistant", "tool_plan": "I will use the currentTime tool.",
    "tool_calls": [{"id": "currentTime_1", "type": "function",
                    "function": {"name": "currentTime", "arguments": "null"}}]},
    "usage": {"tokens": {"input_tokens": 10, "output_tokens": 3}}}


def test_cohere_null_arguments_become_an_empty_object(replay: GatewayThread, answer: Answer) -> None:
    serve(answer, orjson.dumps(COHERE_NULL_ARGS))
    r = client(replay).chat.completions.create(model="cohere", messages=[{"role": "user", "content": "time?"}])
    assert function_calls(r.choices[0].message)[0].function.arguments == "{}"
    message = anthropic.Anthropic(base_url=replay.url, api_key="unused", max_retries=0).messages.create(
        model="cohere", max_tokens=100, messages=[{"role": "user", "content": "time?"}])
    assert [b.input for b in message.content if b.type == "tool_use"] == [{}]


def test_cohere_streamed_null_arguments_become_an_empty_object(replay: GatewayThread, answer: Answer) -> None:
    events: list[dict[str, Any]] = [
        {"id": "g1", "type": "message-start", "delta": {"message": {"role": "assistant"}}},
        {"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {
            "id": "t1", "type": "function", "function": {"name": "currentTime", "arguments": "nu"}}}}},
        {"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": {
            "function": {"arguments": "ll"}}}}},
        {"type": "tool-call-end", "index": 0},
        {"type": "message-end", "delta": {"finish_reason": "TOOL_CALL"}}]
    body = b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events)
    serve(answer, body, "text/event-stream")
    with client(replay).chat.completions.stream(model="cohere", messages=[{"role": "user", "content": "t"}]) as s:
        for _ in s:
            pass
        final = s.get_final_completion()
    assert (final.choices[0].message.tool_calls or [])[0].function.arguments == "{}"


ANTHROPIC_MESSAGE = {"id": "msg_01UpstreamIdOfAnthropic00", "type": "message", "role": "assistant",
                     "model": "claude-sonnet-4-6", "content": [{"type": "text", "text": "Hi"}],
                     "stop_reason": "end_turn", "stop_sequence": None,
                     "usage": {"input_tokens": 3, "output_tokens": 1}}


def test_translated_answers_carry_ids_of_the_clients_own_kind(replay: GatewayThread, answer: Answer) -> None:
    serve(answer, orjson.dumps(ANTHROPIC_MESSAGE))
    first = client(replay).chat.completions.create(model="anthropic", messages=[{"role": "user", "content": "a"}])
    again = client(replay).chat.completions.create(model="anthropic", messages=[{"role": "user", "content": "a"}])
    assert first.id.startswith("chatcmpl-") and first.id != again.id and "Upstream" not in first.id
    serve(answer, orjson.dumps(COHERE_NULL_ARGS))
    messages = anthropic.Anthropic(base_url=replay.url, api_key="unused", max_retries=0).messages
    ids = [messages.create(model="cohere", max_tokens=10, messages=[{"role": "user", "content": "a"}]).id
           for _ in range(2)]
    assert all(i.startswith("msg_01") and len(i) == 28 and "chatcmpl" not in i for i in ids) and ids[0] != ids[1]


@pytest.mark.parametrize("message", [
    "prompt is too long: 210000 tokens > 200000 maximum",
    "input length and `max_tokens` exceed context limit: 190000 + 20000 > 200000",
    "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens.",
    "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
    "Input is too long for requested model.",
    "too many tokens: size limit exceeded by 1000 tokens. Try using shorter or fewer inputs",
])
def test_context_too_long_is_recognised_in_every_providers_words(message: str) -> None:
    assert says_context_too_long(message)


def test_a_too_large_max_tokens_is_not_a_long_context() -> None:
    assert not says_context_too_long("too many tokens: max tokens must be less than or equal to 4000")
    assert error_for(400, "too many tokens: max tokens must be less than 4000", None).kind == "bad_request"
    assert error_for(400, "too many tokens: size limit exceeded", None).kind == "context_too_long"
    assert map_error("ValidationException", 400, "Input is too long for requested model.").kind == "context_too_long"


def test_streamed_thinking_blocks_carry_an_index_and_go_back_without_it() -> None:
    """The openai SDK's stream accumulator refuses list entries without ``index``; Anthropic refuses extra keys."""
    from relaygate.providers.anthropic.request import to_messages_request
    from relaygate.providers.openai_format import ChunkWriter

    w = ChunkWriter("m")
    w.role()
    blocks = [orjson.loads(c[6:])["choices"][0]["delta"]["thinking_blocks"][0] for c in (
        w.thinking_block({"type": "thinking", "thinking": "hm", "signature": "s1"}),
        w.thinking_block({"type": "redacted_thinking", "data": "d1"}))]
    assert [b["index"] for b in blocks] == [0, 1]
    body = {"messages": [{"role": "user", "content": "q"},
                         {"role": "assistant", "content": "a", "thinking_blocks": blocks},
                         {"role": "user", "content": "more"}]}
    sent = to_messages_request(body, "claude-sonnet-4-6", default_max_tokens=100, rejected=(), stream=False).body
    assert sent["messages"][1]["content"][:2] == [{"type": "thinking", "thinking": "hm", "signature": "s1"},
                                                  {"type": "redacted_thinking", "data": "d1"}]
