"""Token usage of an OpenAI-format answer, decoded without building the rest of it.

A msgspec ``Struct`` that names only ``usage`` makes the decoder skip every other value instead of
building it: for a 764-byte chat answer that is a fraction of ``orjson.loads`` (figures in
bench/README.md). Answers whose usage does not fit the typed fields take the general path, so the
result is always what parsing the whole answer would give.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from relaygate.core.call import Usage

_UNSET: Any = msgspec.UNSET


class _Details(msgspec.Struct):
    cached_tokens: int | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None | msgspec.UnsetType = _UNSET
    completion_tokens: int | None | msgspec.UnsetType = _UNSET
    input_tokens: int | None = None
    output_tokens: int | None = None
    prompt_tokens_details: _Details | None = None
    input_tokens_details: _Details | None = None  # the Responses API's name
    type: str | None = None
    seconds: float | None = None


class _Answer(msgspec.Struct):
    usage: _Usage | None = None


_decode = msgspec.json.Decoder(_Answer).decode


def usage_of(body: bytes) -> Usage | None:
    """The usage an answer reports (None when it reports none, or is not a JSON object)."""
    try:  # no `b'"usage"' in body` first: that scan alone costs a third of the decode
        u = _decode(body).usage
    except msgspec.ValidationError:  # JSON, but shaped otherwise than the fields expect
        return _parsed_usage(body)
    except msgspec.DecodeError:
        return None
    if u is None:
        return None
    if u.type == "duration":  # whisper-style transcripts are billed by time
        return Usage(audio_seconds=u.seconds or 0.0)
    prompt = u.prompt_tokens if u.prompt_tokens is not _UNSET else u.input_tokens
    completion = u.completion_tokens if u.completion_tokens is not _UNSET else u.output_tokens
    details = u.prompt_tokens_details or u.input_tokens_details
    cached = (details.cached_tokens or 0) if details is not None else 0
    return Usage(prompt or 0, completion or 0, cached)  # positional: 2.4k instructions, by keyword 4k


def _parsed_usage(body: bytes) -> Usage | None:
    """The general path: the whole answer parsed; counts that are not numbers make the usage unknown."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:  # msgspec read it, orjson does not (a count of 1e999)
        return None
    if not isinstance(data, dict):
        return None
    u = data.get("usage")
    if isinstance(u, dict) and u.get("type") == "duration":
        seconds = u.get("seconds")
        return Usage(audio_seconds=float(seconds) if isinstance(seconds, int | float) else 0.0)
    try:
        return Usage.from_openai(u)
    except (TypeError, ValueError):  # "prompt_tokens": "many"
        return None
