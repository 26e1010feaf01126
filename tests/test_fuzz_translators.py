"""Fuzz every dialect's translators directly (hypothesis): random OpenAI chat requests into each provider's
request translator, random native answers into each response translator. Only the project's own error
classes may come out, and whatever comes out can be serialised. Scaled by FUZZ_EXAMPLES (fuzz_strategies)."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relaygate.api.anthropic.translate import (
    EventWriter,
    to_anthropic_message,
    to_openai_request,
    translate_stream,
)
from relaygate.core import shapes
from relaygate.core.call import Usage
from relaygate.core.errors import GatewayError
from relaygate.core.shapes.anthropic import MessagesRequest
from relaygate.core.shapes.openai import ChatRequest
from relaygate.providers.anthropic import provider as anthropic
from relaygate.providers.anthropic.relay import usage_of as anthropic_usage
from relaygate.providers.anthropic.request import to_messages_request
from relaygate.providers.aws.bedrock_format import from_converse, to_converse
from relaygate.providers.base import ANSWER_ERRORS
from relaygate.providers.cohere import answer as cohere_answer
from relaygate.providers.cohere import request as cohere_request
from relaygate.providers.echo import complete
from relaygate.providers.gemini import format as gemini

from .fuzz_strategies import FUZZ, TIMEOUT, chat_request, either, json_value, messages_request, obj, text

pytestmark = pytest.mark.timeout(TIMEOUT)
REQUEST_TRANSLATORS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "anthropic": lambda b: to_messages_request(b, "claude-sonnet-4-6", default_max_tokens=1024, rejected=(),
                                               stream=True).body,
    "anthropic-budgets": lambda b: to_messages_request(b, "claude-3-7-sonnet", default_max_tokens=2048,
                                                       rejected=("top_p",), stream=False).body,
    "gemini-2": lambda b: gemini.to_request(b, "gemini-2.5-flash"),
    "gemini-3": lambda b: gemini.to_request(b, "gemini-3-pro-preview"),
    "cohere": lambda b: cohere_request.chat_request(b, "command-a-03-2025", True),
    "bedrock": to_converse,
    "demo": complete,
}


def only_our_errors(fn: Callable[[], Any], answer: bool = False) -> None:
    """``fn()`` returns something serialisable, or raises one of the gateway's errors; reading an ``answer``
    it may also raise what the providers' boundary turns into a 502 (providers/base.py: ANSWER_ERRORS, held
    end to end by test_fuzz_http.py's hostile upstream)."""
    try:
        out = fn()
    except GatewayError:
        return
    except ANSWER_ERRORS:
        if answer:
            return
        raise
    orjson.dumps(out)


@FUZZ
@given(chat_request(st.just("m")))
def test_request_translators_raise_only_gateway_errors(body: dict[str, Any]) -> None:
    try:
        shapes.check(body, ChatRequest)  # what the pipeline does before any translator
    except GatewayError:
        return
    for translate in REQUEST_TRANSLATORS.values():
        only_our_errors(lambda t=translate: t(copy.deepcopy(body)))  # type: ignore[misc]


@FUZZ
@given(messages_request(st.just("m")), st.booleans())
def test_messages_requests_translate_to_chat_requests_the_translators_accept(body: dict[str, Any],
                                                                              keep_cache: bool) -> None:
    """/v1/messages: the Anthropic request checked, translated, then checked as the chat request it became."""
    try:
        shapes.check(body, MessagesRequest, dotted=True)
        request, _ = to_openai_request(copy.deepcopy(body), keep_cache)
        shapes.check(request, ChatRequest)
    except GatewayError:
        return
    for translate in REQUEST_TRANSLATORS.values():
        only_our_errors(lambda t=translate: t(copy.deepcopy(request)))  # type: ignore[misc]


# ---- native answers ----------------------------------------------------------------------------------------

USAGE = st.dictionaries(st.sampled_from(["input_tokens", "output_tokens", "prompt_tokens", "completion_tokens",
                                         "cache_read_input_tokens", "promptTokenCount", "candidatesTokenCount",
                                         "inputTokens", "outputTokens", "tokens", "billed_units"]),
                        either(st.integers(0, 10 ** 6)), max_size=4)
ANTHROPIC_ANSWER = obj({"type": st.just("message"), "content": st.lists(st.one_of(
    obj({"type": st.just("text"), "text": text}),
    obj({"type": st.just("tool_use"), "id": text, "name": text, "input": st.dictionaries(text, json_value, max_size=2)}),
    obj({"type": st.sampled_from(["thinking", "redacted_thinking", "server_tool_use"]), "thinking": text,
         "signature": text, "data": text})), max_size=3)},
    {"id": text, "model": text, "role": st.just("assistant"), "stop_reason": st.sampled_from(
        ["end_turn", "max_tokens", "tool_use", "refusal", "pause_turn", "x"]), "usage": USAGE})
GEMINI_PART = st.one_of(obj({"text": text}, {"thought": st.booleans(), "thoughtSignature": text}),
                        obj({"functionCall": obj({"name": text}, {"args": st.dictionaries(text, json_value, max_size=2),
                                                                  "id": text})}))
GEMINI_ANSWER = obj({"candidates": st.lists(obj({}, {
    "content": obj({"parts": st.lists(GEMINI_PART, max_size=3)}, {"role": st.just("model")}),
    "finishReason": st.sampled_from(["STOP", "MAX_TOKENS", "SAFETY", "OTHER", "MALFORMED_FUNCTION_CALL", "Z"]),
    "index": st.integers(0, 3)}), max_size=2)}, {"usageMetadata": USAGE, "modelVersion": text,
                                                 "promptFeedback": obj({}, {"blockReason": text})})
COHERE_ANSWER = obj({"message": obj({}, {"content": st.lists(obj({"type": st.just("text"), "text": text}), max_size=2),
                                         "tool_calls": st.lists(obj({"id": text, "function": obj({"name": text}, {
                                             "arguments": text})}), max_size=2), "tool_plan": text})},
                    {"id": text, "finish_reason": st.sampled_from(["COMPLETE", "MAX_TOKENS", "TOOL_CALL", "ERROR", "x"]),
                     "usage": obj({}, {"tokens": USAGE, "billed_units": USAGE})})
BEDROCK_ANSWER = obj({"output": obj({"message": obj({"content": st.lists(st.one_of(
    obj({"text": text}), obj({"toolUse": obj({"toolUseId": text, "name": text}, {"input": json_value})}),
    obj({"reasoningContent": obj({"reasoningText": obj({"text": text})})})), max_size=3)}, {"role": text})})},
    {"stopReason": st.sampled_from(["end_turn", "tool_use", "max_tokens", "guardrail_intervened", "x"]),
     "usage": USAGE})
OPENAI_ANSWER = obj({"choices": st.lists(obj({}, {"message": obj({}, {
    "content": st.one_of(st.none(), text), "reasoning_content": text,
    "tool_calls": st.lists(obj({"id": text, "function": obj({"name": text}, {"arguments": st.one_of(
        text, st.just('{"a":1}'))})}), max_size=2)}),
    "finish_reason": st.sampled_from(["stop", "length", "tool_calls", "content_filter", "x"])}), max_size=2)},
    {"id": text, "model": text, "usage": USAGE})


@FUZZ
@given(ANTHROPIC_ANSWER, GEMINI_ANSWER, COHERE_ANSWER, BEDROCK_ANSWER, OPENAI_ANSWER)
def test_response_translators_raise_only_gateway_errors(a: Any, g: Any, c: Any, b: Any, o: Any) -> None:
    only_our_errors(lambda: anthropic.to_completion(a, anthropic_usage(a.get("usage"))), answer=True)
    only_our_errors(lambda: (gemini.blocked_reason(g), gemini.to_completion(g, "gemini-2.5-flash", "chatcmpl-1"),
                             gemini.usage_of(g.get("usageMetadata"))), answer=True)
    only_our_errors(lambda: cohere_answer.chat_completion(c, "command-a", cohere_answer.usage_of(c.get("usage"))), answer=True)
    only_our_errors(lambda: from_converse(b, "m"), answer=True)
    only_our_errors(lambda: to_anthropic_message(o, Usage(prompt_tokens=1), "m"), answer=True)


OPENAI_CHUNK = obj({"choices": st.lists(obj({}, {"index": st.integers(0, 2), "delta": obj({}, {
    "content": st.one_of(st.none(), text), "reasoning_content": text, "tool_calls": st.lists(obj({}, {
        "index": st.integers(0, 2), "id": text, "function": obj({}, {"name": text, "arguments": text})}),
        max_size=2)}), "finish_reason": st.sampled_from([None, "stop", "tool_calls", "length"])}), max_size=2)},
    {"id": text, "usage": USAGE})
SSE = st.lists(st.one_of(OPENAI_CHUNK.map(lambda c: b"data: " + orjson.dumps(c) + b"\n\n"),
                         st.sampled_from([b"data: [DONE]\n\n", b"data: {bad\n\n", b": ping\n\n", b"data: 5\n\n"])),
               max_size=6)


@FUZZ
@given(SSE)
def test_the_messages_stream_translation_raises_only_gateway_errors(events: list[bytes]) -> None:
    """OpenAI chunks (any upstream's, translated or not) into Anthropic's events on /v1/messages."""
    async def source() -> AsyncIterator[bytes]:
        for e in events:
            yield e

    async def drain() -> bytes:
        return b"".join([c async for c in translate_stream(source(), EventWriter("m"), lambda: None)])

    only_our_errors(lambda: asyncio.run(drain()).decode(), answer=True)
