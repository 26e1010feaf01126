"""Narrowing helpers for answers parsed by the openai SDK, whose types allow more than the gateway sends."""

from __future__ import annotations

from openai.types.chat import ChatCompletionMessage, ChatCompletionMessageFunctionToolCall
from openai.types.chat.chat_completion_chunk import ChoiceDeltaToolCall, ChoiceDeltaToolCallFunction


def function_calls(message: ChatCompletionMessage) -> list[ChatCompletionMessageFunctionToolCall]:
    """The message's tool calls, every one a function call (the gateway makes no custom tool calls)."""
    calls = message.tool_calls or []
    functions = [c for c in calls if isinstance(c, ChatCompletionMessageFunctionToolCall)]
    assert len(functions) == len(calls), calls
    return functions


def delta_function(delta: ChoiceDeltaToolCall) -> ChoiceDeltaToolCallFunction:
    """A streamed tool call delta's function part, which every delta the gateway sends carries."""
    assert delta.function is not None, delta
    return delta.function
