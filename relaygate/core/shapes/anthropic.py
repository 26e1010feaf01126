"""Anthropic's Messages request (``POST /v1/messages``) as a typed model, for the fields relaygate reads.

Content blocks are one Struct with a ``type`` and the typed fields of the kinds relaygate translates (text,
image, document, tool_use, tool_result, thinking): Anthropic adds block kinds often, and an Anthropic
deployment takes the body as it came, so a kind not listed here is left to the translation (which drops or
refuses it) rather than refused by its name. Unknown fields pass untouched.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from relaygate.core.shapes.openai import Object, Shape


class Source(Shape):
    """An image's or a document's source: base64 ``data``, a ``url``, or text."""

    type: str
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class Block(Shape):
    type: str
    text: str | None = None
    source: Source | None = None
    title: str | None = None
    id: str | None = None
    name: str | None = None
    input: Object | None = None
    tool_use_id: str | None = None
    content: str | list[Block] | None = None  # a tool_result's
    is_error: bool | None = None
    thinking: str | None = None
    signature: str | None = None
    data: str | None = None
    cache_control: Object | None = None


class Message(Shape):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class Tool(Shape):
    name: str
    type: str | None = None  # None or "custom": a client tool; else one of Anthropic's server tools
    description: str | None = None
    input_schema: Object | None = None
    strict: bool | None = None
    cache_control: Object | None = None


class ToolChoice(Shape):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Metadata(Shape):
    user_id: str | None = None


class OutputFormat(Shape):
    type: str
    schema: Object | None = None


class OutputConfig(Shape):
    format: OutputFormat | None = None
    effort: str | None = None


class MessagesRequest(Shape):
    model: str
    messages: Annotated[list[Message], Meta(min_length=1)]
    max_tokens: int | None = None  # required, but by the translation: counting tokens needs none
    system: str | list[Block] | None = None
    temperature: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_k: Annotated[int, Meta(ge=0)] | None = None
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    metadata: Metadata | None = None
    output_config: OutputConfig | None = None
    thinking: Object | None = None
    service_tier: str | None = None
    provider: str | None = None  # relaygate's: the provider to use, as on /v1/chat/completions


