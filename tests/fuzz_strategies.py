"""Hypothesis strategies for the fuzz tests: OpenAI chat requests, Anthropic Messages requests, any JSON.

Each field is either of the right shape or any JSON value at all, so that examples reach deep into the
translators as often as they trip the checks in front of them. ``FUZZ_EXAMPLES`` (environment) scales every
fuzz test: CI runs the default, a long run sets it high (docs/inputs.md).
"""

from __future__ import annotations

import os
from typing import Any

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
TIMEOUT = max(120, EXAMPLES)  # seconds a fuzz test may take (pytest-timeout): a long run takes long
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 100, database=None,
                suppress_health_check=list(HealthCheck))

text = st.text(max_size=12)
leaf = st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 64 - 1) | st.floats(allow_nan=False,
                                                                                      allow_infinity=False) | text
json_value = st.recursive(leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                          max_leaves=8)


def either(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the right shape, sometimes anything."""
    return st.one_of(good, good, good, json_value)


def obj(required: dict[str, st.SearchStrategy[Any]],
        optional: dict[str, st.SearchStrategy[Any]] | None = None) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({k: either(v) for k, v in required.items()},
                                 optional={k: either(v) for k, v in (optional or {}).items()})


B64 = st.sampled_from(["aGVsbG8=", "iVBORw0KGgo=", "JVBERi0xLjQ=", "!!", ""])
MEDIA = st.sampled_from(["image/png", "image/jpeg", "application/pdf", "text/plain", "audio/wav", "x/y", ""])
URL = st.one_of(st.builds(lambda m, d: f"data:{m};base64,{d}", MEDIA, B64),
                st.sampled_from(["https://example.com/a.png", "http://x/y", "ftp://z", "", "data:,x"]))
CACHE = st.sampled_from([{"type": "ephemeral"}, {"type": "ephemeral", "ttl": "1h"}, {}])
ARGS = st.one_of(st.just("{}"), st.just('{"city":"Oslo"}'), st.just("[1]"), st.just("{bad"), text,
                 json_value.map(lambda v: orjson.dumps(v).decode()))

text_part = obj({"type": st.just("text"), "text": text}, {"cache_control": CACHE})
user_part = st.one_of(
    text_part,
    obj({"type": st.just("image_url"), "image_url": obj({"url": URL}, {"detail": st.sampled_from(["low", "x"])})}),
    obj({"type": st.just("input_audio"), "input_audio": obj({"data": B64, "format": st.sampled_from(["wav", "mp3"])})}),
    obj({"type": st.just("file"), "file": obj({}, {"file_data": URL, "filename": text, "file_id": text})}),
)
tool_call = obj({"id": st.sampled_from(["call_1", "call 2", "x" * 70, ""]), "type": st.just("function"),
                 "function": obj({"name": st.sampled_from(["f", "g"]), "arguments": ARGS})},
                {"extra_content": obj({"google": obj({"thought_signature": text})})})
message = st.one_of(
    obj({"role": st.sampled_from(["system", "developer"]), "content": st.one_of(text, st.lists(text_part, max_size=2))},
        {"cache_control": CACHE}),
    obj({"role": st.just("user"), "content": st.one_of(text, st.lists(user_part, max_size=3))},
        {"name": text, "cache_control": CACHE}),
    obj({"role": st.just("assistant")},
        {"content": st.one_of(st.none(), text, st.lists(text_part, max_size=2)), "tool_calls": st.lists(
            tool_call, max_size=2), "thinking_blocks": st.lists(obj({"type": st.just("thinking"), "thinking": text,
                                                                     "signature": text}), max_size=1)}),
    obj({"role": st.just("tool"), "tool_call_id": st.sampled_from(["call_1", "call 2", "zz"]),
         "content": st.one_of(text, st.lists(user_part, max_size=2))}),
    obj({"role": st.just("function"), "name": text, "content": st.one_of(st.none(), text)}),
)
tool = obj({"type": st.just("function"), "function": obj({"name": st.sampled_from(["f", "g"])}, {
    "description": text, "parameters": st.one_of(st.just({"type": "object"}), st.dictionaries(text, json_value,
                                                                                              max_size=2)),
    "strict": st.booleans()})}, {"cache_control": CACHE})
tool_choice = st.one_of(st.sampled_from(["none", "auto", "required"]),
                        obj({"type": st.just("function"), "function": obj({"name": st.sampled_from(["f", "h"])})}))
response_format = st.one_of(
    obj({"type": st.sampled_from(["text", "json_object"])}),
    obj({"type": st.just("json_schema"), "json_schema": obj({"name": text}, {"schema": st.dictionaries(
        text, json_value, max_size=2), "strict": st.booleans()})}))

OPTIONAL = {
    "temperature": st.floats(0, 2), "top_p": st.floats(0, 1), "n": st.integers(1, 3),
    "stop": st.one_of(text, st.lists(text, max_size=3)), "max_tokens": st.integers(-5, 5000),
    "max_completion_tokens": st.integers(0, 5000), "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2), "seed": st.integers(-(2 ** 63), 2 ** 63 - 1),
    "logprobs": st.booleans(), "top_logprobs": st.integers(0, 20), "user": text, "stream": st.booleans(),
    "stream_options": obj({}, {"include_usage": st.booleans()}), "tools": st.lists(tool, max_size=2),
    "tool_choice": tool_choice, "parallel_tool_calls": st.booleans(), "response_format": response_format,
    "reasoning_effort": st.sampled_from(["none", "minimal", "low", "medium", "high", "xhigh", "max"]),
    "metadata": st.dictionaries(text, text, max_size=2), "thinking": obj({"type": st.sampled_from(
        ["enabled", "adaptive", "disabled"])}, {"budget_tokens": st.integers(0, 5000)}),
    "top_k": st.integers(0, 100), "logit_bias": st.dictionaries(text, st.integers(-100, 100), max_size=2),
    "extra_body": obj({"google": obj({}, {"safety_settings": st.lists(json_value, max_size=1),
                                          "thinking_config": st.dictionaries(text, json_value, max_size=1),
                                          "cached_content": text})}),
    "documents": st.lists(json_value, max_size=2), "functions": st.lists(json_value, max_size=1),
}


def chat_request(models: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({"model": models, "messages": either(st.lists(message, min_size=1, max_size=4))},
                                 optional={k: either(v) for k, v in OPTIONAL.items()})


# ---- Anthropic's Messages API ------------------------------------------------------------------------------

SOURCE = st.one_of(
    obj({"type": st.just("base64"), "media_type": MEDIA, "data": B64}),
    obj({"type": st.just("url"), "url": URL}),
    obj({"type": st.just("text"), "media_type": st.just("text/plain"), "data": text}))
BLOCK = st.one_of(
    obj({"type": st.just("text"), "text": text}, {"cache_control": CACHE}),
    obj({"type": st.sampled_from(["image", "document"]), "source": SOURCE}, {"title": text}),
    obj({"type": st.just("tool_use"), "id": text, "name": st.sampled_from(["f", "g"]),
         "input": st.dictionaries(text, json_value, max_size=2)}),
    obj({"type": st.just("tool_result"), "tool_use_id": text},
        {"content": st.one_of(text, st.lists(obj({"type": st.sampled_from(["text", "image"]), "text": text,
                                                  "source": SOURCE}), max_size=2)), "is_error": st.booleans()}),
    obj({"type": st.sampled_from(["thinking", "redacted_thinking", "server_tool_use", "search_result"]),
         "thinking": text, "signature": text, "data": text}),
)
A_MESSAGE = obj({"role": st.sampled_from(["user", "assistant"]),
                 "content": st.one_of(text, st.lists(BLOCK, min_size=1, max_size=3))})
A_OPTIONAL = {
    "system": st.one_of(text, st.lists(obj({"type": st.just("text"), "text": text}), max_size=2)),
    "temperature": st.floats(0, 1), "top_p": st.floats(0, 1), "top_k": st.integers(0, 50),
    "stop_sequences": st.lists(text, max_size=2), "stream": st.booleans(),
    "tools": st.lists(obj({"name": st.sampled_from(["f", "g"])}, {
        "input_schema": st.just({"type": "object"}), "description": text,
        "type": st.sampled_from(["custom", "web_search_20250305"]), "cache_control": CACHE}), max_size=2),
    "tool_choice": obj({"type": st.sampled_from(["auto", "any", "tool", "none"])},
                       {"name": st.sampled_from(["f", "h"]), "disable_parallel_tool_use": st.booleans()}),
    "metadata": obj({}, {"user_id": text}),
    "output_config": obj({}, {"format": obj({"type": st.just("json_schema"), "schema": st.just({"type": "object"})}),
                              "effort": st.sampled_from(["low", "high"])}),
    "thinking": obj({"type": st.sampled_from(["enabled", "disabled"])}, {"budget_tokens": st.integers(0, 3000)}),
}


def messages_request(models: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"model": models, "max_tokens": either(st.integers(1, 4096)),
         "messages": either(st.lists(A_MESSAGE, min_size=1, max_size=3))},
        optional={k: either(v) for k, v in A_OPTIONAL.items()})
