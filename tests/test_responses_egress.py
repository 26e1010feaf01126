"""Chat requests translated for an upstream that serves only the Responses API (``responses_only``), and its
answers back to chat: the pure translation (the end-to-end cells are in test_responses_native.py)."""

from __future__ import annotations

from typing import Any

import pytest

from relaygate.core.call import Call, Route, Usage
from relaygate.core.errors import Unsupported
from relaygate.providers.openai.via_responses import responses_request, whole


def request(body: dict[str, Any], stream: bool = False, cap: int | None = None) -> tuple[dict[str, Any], list[str]]:
    call = Call(id="1", route=Route.CHAT, model="m", body=body, stream=stream)
    call.output_cap = cap
    return responses_request(call, "o3-pro")


def test_a_chat_request_becomes_the_responses_request_it_means() -> None:
    body = {"messages": [
        {"role": "developer", "content": "be exact"},
        {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                     {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{\"q\":1}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "a cat"}]},
    ], "tools": [{"type": "function", "function": {"name": "look", "description": "d", "parameters": {}}}],
        "tool_choice": {"type": "function", "function": {"name": "look"}}, "parallel_tool_calls": False,
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}},
        "max_tokens": 70, "reasoning_effort": "high", "temperature": 0.2, "stop": ["x"], "seed": 1}
    req, dropped = request(body, stream=True)
    assert req["input"] == [
        {"role": "developer", "content": "be exact"},
        {"role": "user", "content": [{"type": "input_text", "text": "what is this?"},
                                     {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"}]},
        {"type": "function_call", "call_id": "call_1", "name": "look", "arguments": "{\"q\":1}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "a cat"}]
    assert req["tools"] == [{"type": "function", "name": "look", "description": "d", "parameters": {}}]
    assert req["tool_choice"] == {"type": "function", "name": "look"} and req["parallel_tool_calls"] is False
    assert req["text"] == {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}}}
    assert req["max_output_tokens"] == 70 and req["reasoning"] == {"effort": "high"} and req["temperature"] == 0.2
    assert req["stream"] is True and req["store"] is False and req["model"] == "o3-pro"
    assert dropped == ["stop", "seed"]


def test_the_budgets_hold_becomes_max_output_tokens_and_n_is_refused() -> None:
    assert request({"messages": [{"role": "user", "content": "hi"}]}, cap=33)[0]["max_output_tokens"] == 33
    with pytest.raises(Unsupported) as e:
        request({"messages": [{"role": "user", "content": "hi"}], "n": 2})
    assert e.value.param == "n"


@pytest.mark.parametrize(("status", "details", "calls", "finish"), [
    ("completed", None, False, "stop"), ("completed", None, True, "tool_calls"),
    ("incomplete", {"reason": "max_output_tokens"}, False, "length"),
    ("incomplete", {"reason": "content_filter"}, False, "content_filter")])
def test_a_response_becomes_a_chat_completion(status: str, details: Any, calls: bool, finish: str) -> None:
    output: list[Any] = [
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "thought"}]},
        {"type": "message", "id": "msg_1", "role": "assistant", "content": [
            {"type": "output_text", "text": "Hel", "annotations": []}, {"type": "output_text", "text": "lo"}]}]
    if calls:
        output.append({"type": "function_call", "id": "fc_1", "call_id": "call_9", "name": "f", "arguments": "{}"})
    response = {"id": "resp_up", "object": "response", "model": "o3-pro", "status": status,
                "incomplete_details": details, "output": output}
    c = whole(response, Usage(prompt_tokens=5, completion_tokens=2))
    message = c["choices"][0]["message"]
    assert c["id"].startswith("chatcmpl-") and "resp_up" not in c["id"]  # an id of the gateway's own kind
    assert message["content"] == "Hello" and message["reasoning_content"] == "thought"
    assert c["choices"][0]["finish_reason"] == finish and c["usage"]["total_tokens"] == 7
    assert [tc["id"] for tc in message.get("tool_calls") or ()] == (["call_9"] if calls else [])
