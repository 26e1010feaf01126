"""The text a stream delivered, read from the events a provider relays without parsing them (core/call.py:
``Delivered``): one small reader per stream format, for the usage of a stream whose upstream never said.

Text means what the upstream bills as output: content, reasoning and tool-call arguments (not ids, names,
signatures, citations or framing). Translating providers count in ``openai_format.ChunkWriter`` from what they
already parsed. The relays hold the events that may carry text (``Delivered.hold``: a list append each) and
the readers below count them only when the estimate is wanted or the relay held enough: the JSON strings of
the keys that carry text, by partitions, substring search and regexes anchored at a key, never a JSON parse of
every event. Measured by callgrind on this machine: ``bytes.find`` costs ~1k instructions a call (it parses
its arguments through a format string), a regex tried along a whole event ~40 an byte, so a reader of each
event as it passed cost ~10k an OpenAI chunk, where holding it costs a list append and reading the held
events at once ~2k each (bench/README.md).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from relaygate.core.call import Delivered

# a JSON string's raw body after its key (the colon and the opening quote), escapes kept
_VALUE = re.compile(rb'\s*:\s*"([^"\\]*(?:\\.[^"\\]*)*)"')
HOLD_BYTES = 32 * 1024  # a relay folds what it held beyond this much (the memory a long stream keeps)
HOLD_EVENTS = 256  # or beyond so many events
# any other delta (the role chunk, tool-call arguments, spaced JSON, several keys): its text keys' strings
_OPENAI_TEXT = re.compile(
    rb'"(?:content|reasoning_content|reasoning|refusal|arguments)"\s*:\s*"([^"\\]*(?:\\.[^"\\]*)*)"')
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
        d.text(chars_of(raw))


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


def openai_chunks(d: Delivered, held: list[bytes]) -> None:
    """Whole SSE events of OpenAI chat chunks, held as relayed: split at every delta at once; the usual
    ``{"content":"…"}`` read by a partition, ``{}`` passed over, any other delta (the role chunk, tool-call
    arguments, spaced JSON, several keys) by a regex over it alone, up to its event's end."""
    pieces = b"".join(held).split(b'"delta":')
    for i in range(1, len(pieces)):
        p = pieces[i]
        if p[:12] == b'{"content":"':
            text, quote, rest = p[12:].partition(b'"')
            if quote and rest[:1] == b"}" and text[-1:] != b"\\":  # a whole string, and the delta ends
                if text:
                    d.text(len(text) if text.isascii() and not text.partition(b"\\")[1] else chars_of(text))
                continue
        elif p[:2] == b"{}":
            continue
        for m in _OPENAI_TEXT.finditer(p.partition(b"\n\n")[0]):
            add(d, m.group(1))


def anthropic_deltas(d: Delivered, held: list[bytes]) -> None:
    """The data of Anthropic's ``content_block_delta`` events: their text, thinking or tool input."""
    for data in held:
        keyed(d, data, ANTHROPIC_KEYS)


def type_of(data: bytes) -> str:
    """An event's ``type`` field, for a stream whose events are not named by an ``event`` line ("" if none)."""
    at = data.find(b'"type"')
    m = _VALUE.match(data, at + 6) if at >= 0 else None
    return m.group(1).decode("ascii", "replace") if m is not None else ""


def cohere_events(d: Delivered, held: list[tuple[str, bytes]]) -> None:
    """Events of Cohere v2's chat stream (named by their ``event`` field, else by their ``type``)."""
    for event, data in held:
        if not event or event == "message":
            event = type_of(data)
        if event in COHERE_TEXT_EVENTS:
            keyed(d, data, COHERE_KEYS)


def bedrock_deltas(d: Delivered, held: list[bytes]) -> None:
    """The JSON payloads of ConverseStream's ``contentBlockDelta`` events: their text, reasoning text or tool
    input (not a reasoning signature, a citation or the ``p`` padding)."""
    for payload in held:
        at = payload.find(b'"delta"')
        m = _BEDROCK_DELTA.match(payload, at + 7) if at >= 0 else None
        if m is not None:
            add(d, m.group(1))


def gemini_events(d: Delivered, held: list[bytes]) -> None:
    """The data of a Gemini stream's events (``GenerateContentResponse``)."""
    for data in held:
        gemini_event(d, data)


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
            if isinstance(text, str):
                d.text(len(text))
            call = p.get("functionCall")
            if isinstance(call, dict) and call.get("args"):
                d.text(len(orjson.dumps(call["args"])))
            code = p.get("executableCode")
            if isinstance(code, dict) and isinstance(code.get("code"), str):
                d.text(len(code["code"]))


def responses_events(d: Delivered, held: list[tuple[str, bytes]]) -> None:
    """Events of OpenAI's Responses stream (named by their ``event`` field, else by their ``type``)."""
    for event, data in held:
        if not event or event == "message":
            if data.find(b'.delta"') < 0:
                continue
            event = type_of(data)
        if event in RESPONSES_TEXT_DELTAS:
            keyed(d, data, (b'"delta"',))


def thought_chars(d: Delivered, parts: Any) -> None:
    """The thoughts among a Gemini candidate's parts: not shown to an OpenAI client, but billed as output."""
    for p in parts if isinstance(parts, list) else ():
        if isinstance(p, dict) and p.get("thought"):
            text = p.get("text")
            if isinstance(text, str):
                d.text(len(text))
