"""The text a stream delivered, read from the bytes a provider relays without parsing them (core/call.py:
``Delivered``): one small extractor per stream format, for the usage of a stream whose upstream never said.

Text means what the upstream bills as output: content, reasoning and tool-call arguments (not ids, names,
signatures, citations or framing). Translating providers count in ``openai_format.ChunkWriter`` from what they
already parsed; the relays below read the JSON strings of the keys that carry text in the events that carry
them, by substring search and a regex anchored at the key (a regex searching a whole event tries its pattern
at every byte, ~20 instructions a byte), never a JSON parse of every event.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from relaygate.core.call import Delivered

# a JSON string's raw body after its key (the colon and the opening quote), escapes kept
_VALUE = re.compile(rb'\s*:\s*"([^"\\]*(?:\\.[^"\\]*)*)"')
# OpenAI chat chunks: the delta's first key, as OpenAI and the servers that mimic it write it (compact)
_OPENAI_DELTA = re.compile(
    rb'\{(?:"(?:content|reasoning_content|reasoning|refusal)"|"tool_calls":\[\{"index":\d+,"function":\{"arguments"):'
    rb'"([^"\\]*(?:\\.[^"\\]*)*)"')
OPENAI_KEYS = (b'"content"', b'"reasoning_content"', b'"reasoning"', b'"refusal"', b'"arguments"')
ANTHROPIC_KEYS = (b'"text"', b'"thinking"', b'"partial_json"')  # text_, thinking_ and input_json_delta
COHERE_KEYS = (b'"text"', b'"thinking"', b'"tool_plan"', b'"arguments"')
# Cohere v2's events that carry text (message-start's empty message and the citations' quoted text do not)
COHERE_TEXT_EVENTS = frozenset(("content-delta", "tool-plan-delta", "tool-call-start", "tool-call-delta"))
# Bedrock's contentBlockDelta: {"delta": {"text"} | {"reasoningContent": {"text"}} | {"toolUse": {"input"}}}
_BEDROCK_DELTA = re.compile(
    rb'\s*:\s*\{\s*"(?:text|(?:reasoningContent|toolUse)"\s*:\s*\{\s*"(?:text|input))"\s*:\s*'
    rb'"([^"\\]*(?:\\.[^"\\]*)*)"')
# the Responses API's events whose "delta" is text (audio deltas are base64, not text)
RESPONSES_TEXT_DELTAS = frozenset((
    "response.output_text.delta", "response.refusal.delta", "response.reasoning_text.delta",
    "response.reasoning_summary_text.delta", "response.function_call_arguments.delta",
    "response.custom_tool_call_input.delta", "response.code_interpreter_call_code.delta",
    "response.mcp_call_arguments.delta", "response.output_audio_transcript.delta",
    "response.audio.transcript.delta"))


def chars_of(raw: bytes) -> int:
    """The characters of a JSON string's raw body (escapes decoded only where there are any)."""
    if raw.isascii() and raw.find(b"\\") < 0:
        return len(raw)
    try:
        return len(orjson.loads(b'"' + raw + b'"'))
    except orjson.JSONDecodeError:
        return len(raw)


def add(d: Delivered, raw: bytes) -> None:
    if raw:
        d.chars += chars_of(raw)
        d.pieces += 1


def keyed(d: Delivered, data: bytes, keys: tuple[bytes, ...], start: int = 0, end: int = -1) -> None:
    """Every string value of ``keys`` (quoted: ``b'"text"'``) in ``data[start:end]``. A key's quotes cannot
    match inside a JSON string (quotes there are escaped); a string *value* equal to a key is passed over,
    since no colon follows it."""
    if end < 0:
        end = len(data)
    for key in keys:
        at = data.find(key, start, end)
        while at >= 0:
            at += len(key)
            m = _VALUE.match(data, at, end)
            if m is not None:
                add(d, m.group(1))
                at = m.end()
            at = data.find(key, at, end)


def openai_chunks(d: Delivered, events: bytes) -> None:
    """Whole SSE events of OpenAI chat chunks: each choice's delta, in the usual shape a find and one anchored
    match (``{"content":"…"}``, a tool call's argument piece), otherwise every text key up to its event's end."""
    at = events.find(b'"delta":')
    while at >= 0:
        at += 8
        m = _OPENAI_DELTA.match(events, at)
        if m is not None and m.group(1) and events[m.end():m.end() + 1] == b"}":
            add(d, m.group(1))
            at = m.end()
        else:  # the role chunk, the finish chunk, spaced JSON, several text keys in one delta
            end = events.find(b"\n\n", at)
            if end < 0:
                end = len(events)
            nxt = events.find(b'"delta":', at, end)  # several choices in one chunk: each delta alone
            keyed(d, events, OPENAI_KEYS, at, nxt if nxt >= 0 else end)
            at = nxt if nxt >= 0 else end
        at = events.find(b'"delta":', at)


def anthropic_event(d: Delivered, event: str, data: bytes) -> None:
    """One event of Anthropic's Messages stream: a content_block_delta's text, thinking or tool input."""
    if event == "content_block_delta":
        keyed(d, data, ANTHROPIC_KEYS)


def cohere_event(d: Delivered, event: str, data: bytes) -> None:
    """One event of Cohere v2's chat stream (named by its ``event`` field, else by its ``type``)."""
    if not event or event == "message":
        at = data.find(b'"type"')
        m = _VALUE.match(data, at + 6) if at >= 0 else None
        event = m.group(1).decode("ascii", "replace") if m is not None else ""
    if event in COHERE_TEXT_EVENTS:
        keyed(d, data, COHERE_KEYS)


def bedrock_event(d: Delivered, event_type: str, payload: bytes) -> None:
    """One ConverseStream event (an event-stream message's type and JSON payload): a contentBlockDelta's
    text, reasoning text or tool input (not a reasoning signature, a citation or the ``p`` padding)."""
    if event_type == "contentBlockDelta":
        at = payload.find(b'"delta"')
        m = _BEDROCK_DELTA.match(payload, at + 7) if at >= 0 else None
        if m is not None:
            add(d, m.group(1))


def gemini_event(d: Delivered, data: bytes) -> None:
    """One ``GenerateContentResponse`` of a Gemini stream: its parts' text (thoughts too) and function calls'
    arguments. Events with only text are read by key; the others (function calls, grounding metadata, which
    repeats the answer's text in its segments, code) are parsed."""
    if data.find(b'"text"') < 0:
        if data.find(b'"functionCall"') < 0 and data.find(b'"executableCode"') < 0:
            return
    elif data.find(b'"functionCall"') < 0 and data.find(b'"groundingMetadata"') < 0 \
            and data.find(b'"executableCode"') < 0:
        keyed(d, data, (b'"text"',))
        return
    try:
        event: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        return
    if isinstance(event, list):
        event = event[0] if event else None
    if isinstance(event, dict):
        gemini_parts(d, event)


def gemini_parts(d: Delivered, event: dict[str, Any]) -> None:
    """The text and function-call arguments of a parsed ``GenerateContentResponse``'s candidates."""
    for cand in event.get("candidates") or ():
        parts = (cand.get("content") or {}).get("parts") if isinstance(cand, dict) else None
        for p in parts if isinstance(parts, list) else ():
            if not isinstance(p, dict):
                continue
            text = p.get("text")
            if isinstance(text, str) and text:
                d.chars += len(text)
                d.pieces += 1
            call = p.get("functionCall")
            if isinstance(call, dict) and call.get("args"):
                d.chars += len(orjson.dumps(call["args"]))
                d.pieces += 1
            code = p.get("executableCode")
            if isinstance(code, dict) and isinstance(code.get("code"), str) and code["code"]:
                d.chars += len(code["code"])
                d.pieces += 1


def responses_event(d: Delivered, event: str, data: bytes) -> None:
    """One event of OpenAI's Responses stream (named by its ``event`` field, else by its ``type``)."""
    if not event or event == "message":
        if data.find(b'.delta"') < 0:
            return
        at = data.find(b'"type"')
        m = _VALUE.match(data, at + 6) if at >= 0 else None
        event = m.group(1).decode("ascii", "replace") if m is not None else ""
    if event in RESPONSES_TEXT_DELTAS:
        keyed(d, data, (b'"delta"',))


def thought_chars(d: Delivered, parts: Any) -> None:
    """The thoughts among a Gemini candidate's parts: not shown to an OpenAI client, but billed as output."""
    for p in parts if isinstance(parts, list) else ():
        if isinstance(p, dict) and p.get("thought"):
            text = p.get("text")
            if isinstance(text, str) and text:
                d.chars += len(text)
                d.pieces += 1
