"""Bedrock's client dialect under hypothesis: any Converse-like request translates or is refused with a
gateway error, and what it becomes is a chat request every provider's translator takes or refuses the same
way; any chat answer, whole or as chunks, becomes a Converse answer or event stream botocore can read."""

from __future__ import annotations

import copy
from typing import Any

from botocore.eventstream import EventStreamBuffer
from hypothesis import given
from hypothesis import strategies as st

from relaygate.api.bedrock.translate import EventWriter, to_converse_response, to_openai_request
from relaygate.core import shapes
from relaygate.core.call import Usage
from relaygate.core.errors import GatewayError
from relaygate.core.shapes.openai import ChatRequest
from relaygate.providers.base import ANSWER_ERRORS

from .fuzz_strategies import ARGS, B64, FUZZ, json_value, obj, text
from .test_fuzz_translators import REQUEST_TRANSLATORS, only_our_errors

image = obj({"format": st.sampled_from(["png", "jpeg", "gif", "webp", "bmp"]), "source": obj({"bytes": B64})})
block = st.one_of(
    obj({"text": text}),
    obj({"image": image}),
    obj({"document": obj({"format": st.sampled_from(["pdf", "txt"]), "name": text,
                          "source": st.one_of(obj({"bytes": B64}), obj({"text": text}))})}),
    obj({"toolUse": obj({"toolUseId": st.sampled_from(["t1", "t 2", ""]), "name": st.sampled_from(["f", "g"]),
                         "input": json_value})}),
    obj({"toolResult": obj({"toolUseId": st.sampled_from(["t1", "t 2", ""])},
                           {"content": st.lists(st.one_of(obj({"text": text}), obj({"json": json_value}),
                                                          obj({"image": image})), max_size=2),
                            "status": st.sampled_from(["success", "error"])})}),
    obj({"cachePoint": obj({"type": st.just("default")})}),
    obj({"reasoningContent": json_value}),
)
converse_request = obj(
    {"messages": st.lists(obj({"role": st.sampled_from(["user", "assistant", "system"]),
                               "content": st.lists(block, max_size=3)}), max_size=3)},
    {"system": st.lists(obj({"text": text}), max_size=2),
     "inferenceConfig": obj({}, {"maxTokens": st.integers(-1, 5000), "temperature": st.floats(-1, 3),
                                 "topP": st.floats(0, 1), "stopSequences": st.lists(text, max_size=2)}),
     "toolConfig": obj({"tools": st.lists(obj({"toolSpec": obj({"name": st.sampled_from(["f", "g"])}, {
         "description": text, "inputSchema": obj({"json": json_value})})}), max_size=2)},
         {"toolChoice": st.sampled_from([{"auto": {}}, {"any": {}}, {"tool": {"name": "f"}}, {"none": {}}])}),
     "additionalModelRequestFields": st.dictionaries(st.sampled_from(["top_k", "seed", "reasoning_effort", "x"]),
                                                     json_value, max_size=2),
     "outputConfig": obj({"textFormat": obj({"structure": obj({"jsonSchema": obj({"schema": st.one_of(
         st.just('{"type":"object"}'), st.just("{bad"), text)})})})}),
     "requestMetadata": st.dictionaries(text, text, max_size=1)})


@FUZZ
@given(converse_request, st.booleans())
def test_converse_requests_translate_to_chat_requests_the_translators_accept(body: dict[str, Any],
                                                                             stream: bool) -> None:
    try:
        request, dropped = to_openai_request(copy.deepcopy(body), "m", stream)
        assert all(isinstance(d, str) for d in dropped)
        shapes.check(request, ChatRequest)  # what the pipeline does before a translating provider
    except GatewayError:
        return
    for translate in REQUEST_TRANSLATORS.values():
        only_our_errors(lambda t=translate: t(copy.deepcopy(request)))  # type: ignore[misc]


tool_call = obj({"id": st.sampled_from(["call_1", "call 2", "x" * 70, ""]), "index": st.integers(0, 2),
                 "function": obj({}, {"name": st.sampled_from(["f", "g"]), "arguments": ARGS})})
delta = obj({}, {"content": st.one_of(st.none(), text), "tool_calls": st.lists(tool_call, max_size=2)})
chunk = obj({"choices": st.lists(obj({"index": st.integers(0, 1), "delta": delta},
                                     {"finish_reason": st.sampled_from(["stop", "length", "tool_calls", "x"])}),
                                 max_size=2)}, {"usage": json_value})


def readable_events(data: bytes) -> list[str]:
    """The event types botocore's own parser reads from ``data`` (raises on a bad frame)."""
    buf = EventStreamBuffer()
    buf.add_data(data)
    return [str(m.headers.get(":event-type")) for m in buf]


@FUZZ
@given(st.lists(chunk, max_size=4), st.integers(0, 10 ** 6))
def test_any_chunks_become_an_event_stream_botocore_reads(chunks: list[dict[str, Any]], tokens: int) -> None:
    w = EventWriter(0.0)
    try:
        out = b"".join(w.chunk(c) for c in chunks) + w.end(Usage(prompt_tokens=tokens, completion_tokens=tokens))
    except ANSWER_ERRORS:  # a chunk of a shape nobody sends: the route's reader makes it a 502 (readable())
        return
    events = readable_events(out)
    assert events[0] == "messageStart" and events[-2:] == ["messageStop", "metadata"]
    starts = events.count("contentBlockStart")
    assert starts <= events.count("contentBlockStop")


@FUZZ
@given(obj({"choices": st.lists(obj({"message": obj({}, {"content": st.one_of(st.none(), text),
                                                          "tool_calls": st.lists(tool_call, max_size=2)})},
                                    {"finish_reason": st.sampled_from(["stop", "tool_calls", "x"])}), max_size=2)},
           {"usage": json_value}))
def test_any_completion_becomes_a_converse_answer(data: dict[str, Any]) -> None:
    only_our_errors(lambda: to_converse_response(data, None, 0.0), answer=True)
