"""Building OpenAI-format replies from other providers' answers, reading OpenAI requests, and reading the usage
of OpenAI answers.

Translating providers share these so that every one emits the same chunk and completion shapes.
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass
from typing import Any

import orjson

from relaygate.core import jsonvalue
from relaygate.core.call import Delivered, Reply, Usage
from relaygate.core.errors import BadRequest
from relaygate.providers.streaming import SSE_DONE, SSEDecoder, sse

DROPPED_HEADER = "x-relaygate-dropped-params"  # names the OpenAI parameters an upstream had no counterpart for
ADJUSTED_HEADER = "x-relaygate-adjusted-params"  # names those moved into the upstream's narrower range


def completion_id() -> str:
    return "chatcmpl-" + os.urandom(12).hex()


def tool_call_id() -> str:
    return "call_" + os.urandom(12).hex()


def completion(
    *, id: str, model: str, content: str | None, tool_calls: list[dict[str, Any]] | None = None,
    finish_reason: str | None, usage: Usage | None, created: int | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A whole ``chat.completion`` object with one choice."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    body: dict[str, Any] = {
        "id": id, "object": "chat.completion", "created": created or int(time.time()), "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": usage_body(usage),
    }
    if extra:
        body.update(extra)
    return body


def usage_body(usage: Usage | None) -> dict[str, Any] | None:
    """OpenAI's usage object; None when the upstream does not report usage (never invented)."""
    if usage is None or not usage.known:
        return None
    out = usage.as_openai()
    if usage.cached_tokens or usage.cache_write_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    return out


class ChunkWriter:
    """Emits ``chat.completion.chunk`` SSE events for one streamed choice, incrementally; the text it emits
    (content, reasoning, refusals, tool-call arguments) is counted in ``delivered`` (pass the reply's:
    ``delivered_of(reply)``), for the usage of a stream cut before its own."""

    def __init__(self, model: str, id: str | None = None, include_usage: bool = False, index: int = 0,
                 created: int | None = None, delivered: Delivered | None = None) -> None:
        self.id = id or completion_id()
        self.model = model
        self.created = created or int(time.time())
        self.index = index  # the choice this writer streams (n > 1: one writer per choice, same id)
        self.include_usage = include_usage
        self.started = False
        self._tool_index: dict[str, int] = {}  # upstream tool-call key -> OpenAI tool_calls index
        self._no_args: dict[str, int] = {}  # tool calls started that have had no argument text yet
        self._thinking_blocks = 0
        self.delivered = delivered if delivered is not None else Delivered()

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        c: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                             "model": self.model,
                             "choices": [{"index": self.index, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if self.include_usage:
            c["usage"] = None
        return sse(c)

    def role(self) -> bytes:
        """The first chunk (assistant role); emitted once."""
        self.started = True
        return self._chunk({"role": "assistant", "content": ""})

    def _ensure_role(self) -> bytes:
        return b"" if self.started else self.role()

    def text(self, text: str) -> bytes:
        if not text:
            return b""
        self.delivered.text(len(text))
        return self._ensure_role() + self._chunk({"content": text})

    def delta(self, delta: dict[str, Any]) -> bytes:
        """A chunk with any other delta fields (e.g. ``reasoning_content``)."""
        for name in ("reasoning_content", "refusal"):
            text = delta.get(name)
            if type(text) is str:
                self.delivered.text(len(text))
        return self._ensure_role() + self._chunk(delta)

    def thinking_block(self, block: dict[str, Any]) -> bytes:
        """A whole signed thinking block (``thinking_blocks``, for the client to send back). It carries an
        ``index`` like any list in a delta: the openai SDK's stream accumulator refuses list entries without."""
        index = self._thinking_blocks
        self._thinking_blocks += 1
        return self.delta({"thinking_blocks": [{"index": index, **block}]})

    def tool_start(self, key: str, call_id: str, name: str, extra: dict[str, Any] | None = None) -> bytes:
        """A new tool call (id and name); ``key`` is the upstream's handle for later argument deltas.

        ``extra`` adds provider fields to the call (Gemini's ``extra_content`` thought signature)."""
        index = self._tool_index.setdefault(key, len(self._tool_index))
        self._no_args[key] = index
        call: dict[str, Any] = {"index": index, "id": call_id, "type": "function",
                                "function": {"name": name, "arguments": ""}}
        if extra:
            call.update(extra)
        return self._ensure_role() + self._chunk({"tool_calls": [call]})

    def tool_args(self, key: str, fragment: str) -> bytes:
        if not fragment:
            return b""
        self._no_args.pop(key, None)
        index = self._tool_index[key]
        self.delivered.text(len(fragment))
        return self._chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})

    def tool_end(self, key: str) -> bytes:
        """The end of a tool call: one that had no arguments gets ``"{}"``, as OpenAI streams it (clients
        that parse arguments, like the openai SDK's ``stream()`` helper, fail on ``""``)."""
        index = self._no_args.pop(key, None)
        if index is None:
            return b""
        return self._chunk({"tool_calls": [{"index": index, "function": {"arguments": "{}"}}]})

    def finish(self, reason: str | None) -> bytes:
        out = self._ensure_role()
        for key in list(self._no_args):
            out += self.tool_end(key)
        return out + self._chunk({}, reason or "stop")

    def usage(self, usage: Usage | None) -> bytes:
        """The usage-only chunk, when the client asked for it."""
        if not self.include_usage:
            return b""
        c = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
             "choices": [], "usage": usage_body(usage)}
        return sse(c)

    @staticmethod
    def done() -> bytes:
        return SSE_DONE


def embeddings_response(vectors: list[list[float]], model: str, usage: Usage | None,
                        encoding_format: str | None = "float") -> dict[str, Any]:
    """OpenAI's embeddings list; ``base64`` packs each vector as little-endian float32, as OpenAI does."""
    import array
    import sys

    data = []
    for i, vec in enumerate(vectors):
        emb: Any = vec
        if encoding_format == "base64":
            arr = array.array("f", vec)
            if sys.byteorder != "little":
                arr.byteswap()
            emb = base64.b64encode(arr.tobytes()).decode()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    u = usage or Usage(known=False)
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": u.prompt_tokens, "total_tokens": u.prompt_tokens} if u.known else None}


# ---- reading OpenAI requests ---------------------------------------------------------------------------

@dataclass(slots=True)
class Image:
    """An image part: inline bytes (``data`` + ``media_type``) or a remote ``url``."""

    media_type: str | None = None
    data: bytes | None = None
    url: str | None = None

    @property
    def b64(self) -> str:
        return base64.b64encode(self.data or b"").decode()


def parse_image_url(url: str, param: str) -> Image:
    """An ``image_url`` value: a ``data:`` URI (decoded) or an http(s) URL (left for the provider)."""
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if ";base64" not in header or not payload:
            raise BadRequest("image data URIs must be base64 encoded", param=param)
        try:
            data = base64.b64decode(payload, validate=True)
        except ValueError:
            raise BadRequest("image data URI is not valid base64", param=param) from None
        return Image(media_type=header[5:].split(";")[0] or "image/png", data=data)
    if url.startswith(("http://", "https://")):
        return Image(url=url)
    raise BadRequest("image_url.url must be an http(s) URL or a data: URI", param=param)


def content_parts(content: Any, param: str, media: bool = False) -> list[str | Image]:
    """A message's content as a list of text strings and images.

    With ``media``, ``input_audio`` and inline ``file`` parts (PDFs…) come back as ``Image`` values too,
    their ``media_type`` telling them apart (for providers that read any media, like Gemini)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise BadRequest(f"{param} must be a string or an array of content parts", param=param)
    parts: list[str | Image] = []
    for i, p in enumerate(content):
        if not isinstance(p, dict):
            raise BadRequest(f"{param}[{i}] must be an object", param=f"{param}[{i}]")
        kind = p.get("type")
        if kind == "text":
            parts.append(str(p.get("text", "")))
        elif kind == "image_url":
            iu = p.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else iu
            if not isinstance(url, str):
                raise BadRequest(f"{param}[{i}].image_url.url must be a string", param=f"{param}[{i}]")
            parts.append(parse_image_url(url, f"{param}[{i}].image_url"))
        elif media and kind in ("input_audio", "file"):
            parts.append(_media_part(p, kind, f"{param}[{i}]"))
        else:
            raise BadRequest(f"content part type {kind!r} is not supported by this provider",
                             param=f"{param}[{i}].type")
    return parts


def _media_part(p: dict[str, Any], kind: str, param: str) -> Image:
    """An ``input_audio`` part ({data, format}) or a ``file`` part carrying a data: URI."""
    body = p.get(kind)
    if not isinstance(body, dict):
        raise BadRequest(f"{param}.{kind} must be an object", param=f"{param}.{kind}")
    if kind == "input_audio":
        fmt, data = body.get("format"), body.get("data")
        if not isinstance(fmt, str) or not isinstance(data, str):
            raise BadRequest(f"{param}.input_audio needs data (base64) and format", param=f"{param}.input_audio")
        return parse_image_url(f"data:audio/{fmt};base64,{data}", f"{param}.input_audio")
    uri = body.get("file_data")
    if not isinstance(uri, str) or not uri.startswith("data:"):
        raise BadRequest(f"{param}.file needs file_data as a data: URI (uploaded file ids are not supported "
                         "by this provider)", param=f"{param}.file")
    return parse_image_url(uri, f"{param}.file.file_data")


def text_of(content: Any) -> str:
    """The concatenated text of a message's content (images ignored)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def tool_calls_of(m: dict[str, Any], param: str) -> list[tuple[dict[str, Any], str, dict[str, Any]]]:
    """An assistant message's ``tool_calls``, checked: each call, its function's name, its arguments as an
    object (providers that want objects)."""
    calls = m.get("tool_calls") or []
    if not isinstance(calls, list):
        raise BadRequest(f"{param}.tool_calls must be an array", param=f"{param}.tool_calls")
    out = []
    for k, tc in enumerate(calls):
        fn = tc.get("function") if isinstance(tc, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadRequest(f"{param}.tool_calls[{k}].function.name is required", param=f"{param}.tool_calls[{k}]")
        out.append((tc, fn["name"], tool_arguments(fn.get("arguments"), f"{param}.tool_calls[{k}].function.arguments")))
    return out


def stop_sequences(body: dict[str, Any]) -> list[str] | None:
    """OpenAI's ``stop`` (a string or an array of strings) as a list; None when absent or empty."""
    stop = body.get("stop")
    if not stop:
        return None
    seqs = [stop] if isinstance(stop, str) else stop
    if not isinstance(seqs, list) or not all(isinstance(s, str) for s in seqs):
        raise BadRequest("'stop' must be a string or an array of strings", param="stop")
    return seqs


def tool_arguments(raw: Any, param: str) -> dict[str, Any]:
    """A tool call's ``arguments`` JSON string as an object (providers that want objects)."""
    if isinstance(raw, dict):
        return raw
    if raw in (None, ""):
        return {}
    if not isinstance(raw, str):
        raise BadRequest("tool call arguments must be a JSON object string", param=param)
    try:
        value = jsonvalue.loads(raw, jsonvalue.ROOM)  # placed deeper in the translated body
    except jsonvalue.JSONRejected as e:
        raise BadRequest(f"tool call arguments are not accepted: {e.message}", param=param) from None
    if not isinstance(value, dict):
        raise BadRequest("tool call arguments must be a JSON object", param=param)
    return value


def usage_at(events: bytes, start: int) -> int:
    """Where the next usage object of SSE ``events`` is, from ``start`` (-1: none; the ``"usage":null`` of
    each chunk is not one). ``find``, not ``in``: on bytes, ``needle in haystack`` first tries the needle
    as an integer, and builds and drops a TypeError each time."""
    compact = events.find(b'"usage":{', start)
    spaced = events.find(b'"usage": {', start)
    return compact if spaced < 0 or 0 <= compact < spaced else spaced


def take_usage(events: bytes, reply: Reply, keep_usage_chunk: bool) -> bytes:
    """Whole SSE ``events`` with the usage they carry noted on ``reply`` (only the events that hold one are
    decoded); the usage-only chunk (no choices: the client did not ask for it) is dropped unless kept."""
    out: list[bytes] = []
    done = 0  # events[:done] is handled
    at = usage_at(events, 0)
    while at >= 0:
        start = events.rfind(b"\n\n", done, at)
        start = done if start < 0 else start + 2
        end = events.find(b"\n\n", at)
        end = len(events) if end < 0 else end + 2
        if _usage_only(events[start:end], reply) and not keep_usage_chunk:
            out.append(events[done:start])
        else:
            out.append(events[done:end])
        done = end
        at = usage_at(events, done)
    out.append(events[done:])
    return b"".join(out)


def _usage_only(event: bytes, reply: Reply) -> bool:
    """Note the usage the event carries (events, if its framing mixed line endings); whether it is nothing but
    the usage-only chunk."""
    only: bool | None = None
    decoder = SSEDecoder()
    for _, data in decoder.feed(event) + decoder.end():
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            only = False
            continue
        try:
            u = Usage.from_openai(chunk.get("usage")) if isinstance(chunk, dict) else None
        except (TypeError, ValueError):  # counts that are not numbers: the usage stays unknown
            u = None
        if u is not None:
            reply.usage = u
        only = only is not False and u is not None and not chunk.get("choices")
    return bool(only)


def usage_of(body: bytes) -> Usage | None:
    """The usage of a whole OpenAI answer (tokens, or a transcript's seconds); None when it names none."""
    # find "usage" without parsing big bodies twice: only parse when present
    if b'"usage"' not in body:
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    u = data.get("usage")
    if isinstance(u, dict) and u.get("type") == "duration":  # whisper-style transcripts are billed by time
        seconds = u.get("seconds")
        return Usage(audio_seconds=float(seconds) if isinstance(seconds, (int, float)) else 0.0)
    try:
        return Usage.from_openai(u)
    except (TypeError, ValueError):  # "prompt_tokens": "many", [null]: the usage is unknown
        return None
