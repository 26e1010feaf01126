"""The same-dialect fast path (core/call.py NativeCall): a Gemini, Cohere or Bedrock client's chat body is
made only when something reads it; the limits read what they need from the client's own body; the relayed
answers are read for their usage and failures only (providers/native_answers.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from relaygate.api.gemini.translate import to_openai_request
from relaygate.core.call import Dialect, NativeCall, NativeRequest
from relaygate.core.errors import BadRequest
from relaygate.core.pricing import Pricing, call_choices, call_output_cap, call_prompt_tokens
from relaygate.limits.layer import hold_output
from relaygate.providers.anthropic.relay import usage_of as messages_usage
from relaygate.providers.aws.bedrock_format import usage_of as converse_usage
from relaygate.providers.cohere.answer import usage_of as cohere_usage
from relaygate.providers.gemini.format import usage_of as gemini_usage
from relaygate.providers.native_answers import cohere_answer, converse_answer, gemini_answer, messages_answer

GEMINI_BODY = {"systemInstruction": {"parts": [{"text": "be brief"}]},
               "contents": [{"role": "user", "parts": [{"text": "what is in this picture?"},
                                                       {"inlineData": {"mimeType": "image/png", "data": "A" * 50_000}}]}],
               "generationConfig": {"maxOutputTokens": 300, "candidateCount": 2}}


def gemini_call(body: dict[str, Any], made: list[int]) -> NativeCall:
    native = NativeRequest(Dialect.GEMINI, body)

    def translate() -> dict[str, Any]:
        made.append(1)
        request, dropped = to_openai_request(body, "gem", False)
        native.dropped[:] = dropped
        return request

    return NativeCall(native, translate, id="req_1", model="gem")


def test_the_chat_body_is_made_once_and_only_when_read() -> None:
    made: list[int] = []
    call = gemini_call({**GEMINI_BODY, "safetySettings": []}, made)
    assert not call.translated and not made
    assert call.body["messages"][0] == {"role": "system", "content": "be brief"}
    assert call.body["max_completion_tokens"] == 300
    assert made == [1] and call.translated and call.native is not None and call.native.dropped == ["safetySettings"]
    call.body = {"model": "gem", "messages": []}  # condensing replaces it: no translation after that
    assert call.body == {"model": "gem", "messages": []} and made == [1]


def test_a_translation_that_refuses_the_body_refuses_it_each_time_it_is_asked() -> None:
    made: list[int] = []
    call = gemini_call({"contents": []}, made)
    for _ in range(2):
        with pytest.raises(BadRequest):
            call.body  # noqa: B018
    assert made == [1, 1] and not call.translated


def test_the_limits_read_the_clients_own_body_without_translating_it() -> None:
    made: list[int] = []
    call = gemini_call(orjson.loads(orjson.dumps(GEMINI_BODY)), made)
    assert call_output_cap(call) == 300 and call_choices(call) == 2
    estimate = call_prompt_tokens(call)
    # the text and the field names at ~4 characters a token; the 50,000 base64 characters of the image count
    # as the chat estimate counts a non-text part (1,000 characters)
    assert 250 < estimate < 400
    assert hold_output(call, 100) and call.native is not None
    assert call.native.body["generationConfig"]["maxOutputTokens"] == 100
    assert not hold_output(call, 200)  # the client's cap (100 now) is lower already
    assert not made and not call.translated
    chat = Pricing.prompt_tokens(call.body)  # made now: the same order of magnitude as the chat estimate
    assert made == [1] and chat <= estimate and call.body["max_completion_tokens"] == 100
    assert call_prompt_tokens(call) == chat and call_output_cap(call) == 100


@pytest.mark.parametrize("dialect, body, cap", [
    (Dialect.COHERE, {"model": "c", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 70}, 70),
    (Dialect.BEDROCK, {"messages": [{"role": "user", "content": [{"text": "hi"}]}],
                       "inferenceConfig": {"maxTokens": 80}}, 80),
    (Dialect.GEMINI, {"contents": [{"parts": [{"text": "hi"}]}], "generation_config": {"max_output_tokens": 90}}, 90),
])
def test_each_dialects_own_output_cap_is_read_and_lowered(dialect: Dialect, body: dict[str, Any], cap: int) -> None:
    native = NativeRequest(dialect, body, raw=orjson.dumps(body), sha256="0" * 64)
    call = NativeCall(native, lambda: pytest.fail("translated"), id="req_2", model="m")
    assert call_output_cap(call) == cap and call_choices(call) == 1
    assert hold_output(call, cap - 10) and native.output_cap() == cap - 10
    assert call.output_cap == cap - 10
    assert native.raw is None and native.sha256 is None  # the body changed: the client's bytes are not it now


GEMINI_ANSWER = {"candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]}, "finishReason": "STOP"}],
                 "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 3, "thoughtsTokenCount": 2,
                                   "cachedContentTokenCount": 1, "totalTokenCount": 12}, "modelVersion": "g"}
COHERE_ANSWER = {"id": "x", "finish_reason": "COMPLETE", "message": {"role": "assistant", "content": []},
                 "usage": {"billed_units": {"input_tokens": 5, "output_tokens": 6},
                           "tokens": {"input_tokens": 9, "output_tokens": 6}, "cached_tokens": 2}}
CONVERSE_ANSWER = {"output": {"message": {"role": "assistant", "content": [{"text": "hi"}]}}, "stopReason": "end_turn",
                   "usage": {"inputTokens": 4, "outputTokens": 5, "cacheReadInputTokens": 3,
                             "cacheWriteInputTokens": 2, "totalTokens": 14}}


def test_answers_are_read_for_the_same_usage_as_parsing_them_whole() -> None:
    g = gemini_answer(orjson.dumps(GEMINI_ANSWER))
    assert g is not None and g.usage() == gemini_usage(GEMINI_ANSWER["usageMetadata"])
    assert g.finishes() == [{"finishReason": "STOP", "finishMessage": None}]
    c = cohere_answer(orjson.dumps(COHERE_ANSWER))
    assert c is not None and c.tokens() == cohere_usage(COHERE_ANSWER["usage"]) and c.finish_reason == "COMPLETE"
    b = converse_answer(orjson.dumps(CONVERSE_ANSWER))
    assert b is not None and b.tokens() == converse_usage(CONVERSE_ANSWER["usage"])
    only_billed = {"usage": {"billed_units": {"input_tokens": 5, "output_tokens": 6}}}
    c2 = cohere_answer(orjson.dumps(only_billed))
    assert c2 is not None and c2.tokens() == cohere_usage(only_billed["usage"])
    assert gemini_answer(b'{"usageMetadata": {}}') is not None


@pytest.mark.parametrize("raw", [b"[1, 2]", b"not json", b'{"usage": {"inputTokens": "many"}}',
                                 b'{"usageMetadata": {"promptTokenCount": "7"}, "usage": {"tokens": []}}'])
def test_an_answer_shaped_otherwise_is_left_to_the_whole_parse(raw: bytes) -> None:
    assert converse_answer(raw) is None or b"inputTokens" not in raw
    if raw.startswith(b"{") and b"usageMetadata" in raw:
        assert gemini_answer(raw) is None and cohere_answer(raw) is None
    if not raw.startswith(b"{"):
        assert gemini_answer(raw) is None and cohere_answer(raw) is None and converse_answer(raw) is None


MESSAGES_ANSWER = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
                   "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn", "stop_sequence": None,
                   "usage": {"input_tokens": 41, "cache_creation_input_tokens": 3, "cache_read_input_tokens": 5,
                             "cache_creation": {"ephemeral_5m_input_tokens": 3}, "output_tokens": 20,
                             "service_tier": "standard"}}


def test_a_messages_answer_is_read_for_its_type_and_the_usage_its_whole_parse_gives() -> None:
    m = messages_answer(orjson.dumps(MESSAGES_ANSWER))
    assert m is not None and m.type == "message" and m.tokens() == messages_usage(MESSAGES_ANSWER["usage"])
    no_usage = messages_answer(b'{"type": "message", "usage": null}')
    assert no_usage is not None and no_usage.tokens() is None is messages_usage(None)
    error = messages_answer(b'{"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}')
    assert error is not None and error.type == "error"  # the provider reads it whole, as an error
    # shaped otherwise (a count not a whole number in range, a usage not an object, no object): read whole
    for raw in (b'{"type": "message", "usage": {"input_tokens": 1.5}}', b'{"type": "message", "usage": []}',
                b'{"type": "message", "usage": {"output_tokens": -1}}', b"[1]", b"not json"):
        assert messages_answer(raw) is None, raw


def test_a_failed_gemini_generation_is_told_from_a_finished_one() -> None:
    """The relay raises a failed generation (a fallback may still serve the call) from the decoded reasons."""
    from relaygate.providers.gemini.provider import _FINISHED

    for reason, failed in (("STOP", False), ("MAX_TOKENS", False), ("SAFETY", False), ("OTHER", True),
                           ("MALFORMED_FUNCTION_CALL", True), ("SOMETHING_NEW", True)):
        read = gemini_answer(orjson.dumps({"candidates": [{"finishReason": reason}]}))
        assert read is not None and (not read.reasons() <= _FINISHED) is failed, reason
    # a count that is not a whole number in range: read whole instead (where it counts as 0)
    assert gemini_answer(b'{"usageMetadata": {"promptTokenCount": 1.5}}') is None
    assert converse_answer(b'{"usage": {"inputTokens": -1}}') is None
