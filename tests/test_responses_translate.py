"""The Responses translation alone (hypothesis): any request body is a chat request or one of the gateway's
errors, never an internal error; any sequence of well-formed chat chunks becomes a well-formed event stream
(consecutive sequence numbers, every item added is done, one final event) whose final response the openai
SDK's own stream accumulator accepts. Scaled by FUZZ_EXAMPLES (fuzz_strategies)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from relaygate.api.responses.translate import ResponseEvents, chat_request, input_items, response_shell
from relaygate.core.call import Usage
from relaygate.core.errors import GatewayError

from .fuzz_strategies import ARGS, FUZZ, TIMEOUT, json_value, obj, text

pytestmark = pytest.mark.timeout(TIMEOUT)

PART = st.one_of(obj({"type": st.sampled_from(["input_text", "output_text"]), "text": text}),
                 obj({"type": st.just("input_image"), "image_url": st.sampled_from(["https://x/y.png", "data:,"])},
                     {"detail": st.sampled_from(["low", "auto"])}),
                 obj({"type": st.just("input_file"), "file_data": text}, {"filename": text}),
                 obj({"type": st.sampled_from(["refusal", "nope"]), "refusal": text}))
ITEM = st.one_of(
    obj({"role": st.sampled_from(["user", "assistant", "system", "developer", "robot"]),
         "content": st.one_of(text, st.lists(PART, max_size=3))}, {"type": st.just("message"), "id": text}),
    obj({"type": st.just("function_call"), "call_id": text, "name": text, "arguments": ARGS}, {"id": text}),
    obj({"type": st.just("function_call_output"), "call_id": text, "output": st.one_of(text, st.lists(PART))}),
    obj({"type": st.sampled_from(["reasoning", "item_reference", "web_search_call"])}, {"summary": json_value}),
)
REQUEST = obj({"model": st.just("m"), "input": st.one_of(text, st.lists(ITEM, max_size=4))}, {
    "instructions": text, "max_output_tokens": st.integers(-2, 10 ** 6), "temperature": st.floats(0, 2),
    "tools": st.lists(st.one_of(obj({"type": st.just("function"), "name": text},
                                    {"parameters": json_value, "strict": st.booleans()}),
                                obj({"type": st.sampled_from(["web_search", "file_search", "what"])})), max_size=2),
    "tool_choice": st.one_of(st.sampled_from(["auto", "none", "required", "x"]),
                             obj({"type": st.just("function"), "name": text})),
    "text": obj({}, {"format": obj({"type": st.sampled_from(["text", "json_object", "json_schema", "xml"])},
                                   {"schema": json_value, "name": text, "strict": st.booleans()})}),
    "reasoning": obj({}, {"effort": st.sampled_from(["low", "high", "max"])}), "stream": st.booleans(),
    "parallel_tool_calls": st.booleans(), "metadata": json_value, "user": text})


@FUZZ
@given(REQUEST)
def test_any_request_is_a_chat_request_or_our_error(body: dict[str, Any]) -> None:
    try:
        req = chat_request(body, input_items(body.get("input")))
    except GatewayError:
        return
    orjson.dumps(req)
    assert req["messages"] and all(isinstance(m, dict) and m.get("role") in ("system", "user", "assistant", "tool")
                                   for m in req["messages"])


DELTA = st.fixed_dictionaries({}, optional={
    "content": st.one_of(st.none(), text), "reasoning_content": text, "refusal": text,
    "tool_calls": st.lists(st.fixed_dictionaries({"index": st.integers(0, 2)}, optional={
        "id": st.sampled_from(["call_a", "call_b"]), "function": st.fixed_dictionaries(
            {}, optional={"name": st.sampled_from(["f", "g"]), "arguments": text})}), max_size=2)})
CHUNK = st.fixed_dictionaries({"choices": st.lists(st.fixed_dictionaries({"index": st.just(0), "delta": DELTA}, optional={
    "finish_reason": st.sampled_from([None, "stop", "tool_calls", "length"])}), max_size=1)})
EVENTS: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)


def events_of(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for block in raw.split(b"\n\n"):
        if block:
            name, data = block.split(b"\n", 1)
            event = orjson.loads(data.removeprefix(b"data: "))
            assert name == b"event: " + event["type"].encode()
            out.append(event)
    return out


@FUZZ
@given(st.lists(CHUNK, max_size=8), st.booleans())
def test_any_chunks_make_a_well_formed_event_stream(chunks: list[dict[str, Any]], fail: bool) -> None:
    ended: list[dict[str, Any]] = []
    w = ResponseEvents(response_shell("resp_1", 1, {"model": "m"}, None, None), ended.append)
    raw = b"".join(w.chunk(c) for c in chunks)
    raw += w.fail(GatewayError("cut", status=502)) if fail else w.end(Usage(prompt_tokens=3, completion_tokens=2))
    events = events_of(raw)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created" and events[1]["type"] == "response.in_progress"
    added = [e["output_index"] for e in events if e["type"] == "response.output_item.added"]
    done = [e["output_index"] for e in events if e["type"] == "response.output_item.done"]
    assert sorted(added) == sorted(done) == list(range(len(added)))
    final = events[-1]
    assert len(ended) == 1 and final["response"]["status"] == ended[0]["status"]
    assert final["type"] == ("response.failed" if fail else f"response.{final['response']['status']}")
    state: ResponseStreamState[object] = ResponseStreamState(input_tools=[], text_format=omit)
    for e in events:  # the SDK's own accumulator, with its identity checks
        state.handle_event(EVENTS.validate_python(e))
    if not fail and final["response"]["status"] == "completed":
        assert [o["id"] for o in final["response"]["output"]] == [e["item"]["id"] for e in events
                                                                   if e["type"] == "response.output_item.done"]
