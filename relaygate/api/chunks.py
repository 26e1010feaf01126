"""An OpenAI chat stream turned into another API's events (Anthropic's Messages, OpenAI's Responses), chunk
by chunk, by a writer that knows that API's event sequence."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import orjson

from relaygate.core.aiter import aclose
from relaygate.core.call import Call, Reply, Usage
from relaygate.core.errors import Unavailable
from relaygate.providers.base import readable
from relaygate.providers.openai_format import DROPPED_HEADER
from relaygate.providers.streaming import SSEDecoder


class ChunkWriter(Protocol):
    """Events of another API from OpenAI chat chunks: one call per chunk, one at the end."""

    def chunk(self, chunk: dict[str, Any]) -> bytes: ...

    def error(self, err: dict[str, Any]) -> bytes: ...

    def end(self, usage: Usage | None) -> bytes: ...


class ChatChunkWalk(ABC):
    """What the dialect writers read of OpenAI chat chunks, walked once: the first choice's reasoning, text and
    tool call pieces in the order they come, its finish reason, a chunk's usage. A subclass writes each piece
    as its dialect's events (``begin``, ``reasoning``, ``text``, ``tool_start``, ``tool_arguments``) and its
    ``error`` and ``end``."""

    __slots__ = ("started", "tools", "finish", "chunk_usage")

    def __init__(self) -> None:
        self.started = False
        self.tools: dict[int, int] = {}  # OpenAI tool_calls index -> the dialect's index of that call
        self.finish: str | None = None  # the upstream's finish_reason
        self.chunk_usage: Any = None  # the usage a chunk carried

    @abstractmethod
    def begin(self, chunk: dict[str, Any]) -> bytes:
        """The events that open the answer (``chunk``: its first chunk, empty when the stream had none)."""

    def reasoning(self, text: str) -> bytes:
        """A piece of reasoning; a dialect with no place for it leaves it out."""
        return b""

    @abstractmethod
    def text(self, text: str) -> bytes:
        """A piece of the answer's text."""

    @abstractmethod
    def tool_start(self, call_id: Any, name: str) -> tuple[int, bytes]:
        """A new tool call (``call_id``: the upstream's, maybe None): its index in the dialect, its events."""

    @abstractmethod
    def tool_arguments(self, index: int, arguments: str) -> bytes:
        """A piece of the JSON text of the arguments of the tool call at ``index``."""

    def opening(self, chunk: dict[str, Any]) -> bytes:
        """``begin``'s events the first time, then nothing."""
        if self.started:
            return b""
        self.started = True
        return self.begin(chunk)

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        out = b"" if self.started else self.opening(chunk)  # (a call less a chunk: this is per event)
        if chunk.get("usage"):
            self.chunk_usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                out += self.reasoning(reasoning)
            text = delta.get("content")
            if text:
                out += self.text(text)
            for tc in delta.get("tool_calls") or ():
                fn = tc.get("function") or {}
                i = self.tools.get(tc.get("index", 0))
                if i is None:
                    i, start = self.tool_start(tc.get("id"), fn.get("name") or "")
                    self.tools[tc.get("index", 0)] = i
                    out += start
                arguments = fn.get("arguments")
                if arguments:
                    out += self.tool_arguments(i, arguments)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out


def stream_error_message(err: dict[str, Any]) -> str:
    """The message of an error object an upstream put inside its stream (``{"error": {...}}`` or bare)."""
    e = err.get("error")
    return str((e if isinstance(e, dict) else err).get("message") or "upstream error")


async def translate_stream(stream: AsyncIterator[bytes], w: ChunkWriter,
                           usage_of: Callable[[], Usage | None]) -> AsyncIterator[bytes]:
    """OpenAI SSE bytes -> the writer's events; each chunk's JSON is parsed once. ``usage_of()`` gives the
    reply's usage (set by the provider while streaming) for the writer's end."""
    decoder = SSEDecoder()
    try:
        async for piece in stream:
            out: list[bytes] = []  # joined once: a read may hold thousands of events
            for _, data in decoder.feed(piece):
                if data == b"[DONE]":
                    out.append(w.end(usage_of()))
                    yield b"".join(out)
                    return
                obj = orjson.loads(data)
                if not isinstance(obj, dict):
                    continue
                if "error" in obj and "choices" not in obj:
                    out.append(w.error(obj))
                    yield b"".join(out)
                    return
                out.append(w.chunk(obj))
            chunk = b"".join(out)
            if chunk:
                yield chunk
        yield w.end(usage_of())
    finally:
        await aclose(stream)


def whole_as_chunk(data: dict[str, Any]) -> dict[str, Any]:
    """A whole chat.completion as the one chunk that would have streamed it (for a client that asked for a
    stream and got a whole answer, e.g. from the cache)."""
    choice = data["choices"][0] if data.get("choices") else {}
    msg = choice.get("message") or {}
    calls = [{**tc, "index": i} for i, tc in enumerate(msg.get("tool_calls") or ())]
    delta: dict[str, Any] = {"content": msg.get("content"), "tool_calls": calls}
    for name in ("reasoning_content", "refusal"):
        if msg.get(name):
            delta[name] = msg[name]
    return {"id": data.get("id"), "model": data.get("model"), "choices": [{
        "index": 0, "delta": delta, "finish_reason": choice.get("finish_reason")}]}


async def once(events: bytes) -> AsyncIterator[bytes]:
    yield events


def chat_completion(reply: Reply) -> dict[str, Any]:
    """The whole chat.completion a reply carries; else the reply is finished as a 502, which is raised."""
    try:
        data = orjson.loads(reply.body or b"")
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise ValueError("not a chat completion")
    except ValueError:
        err = Unavailable("the upstream answer was not a chat completion", status=502)
        reply.finish(err)
        raise err from None
    return data


def arguments_object(raw: Any) -> Any:
    """A tool call's arguments (OpenAI's JSON text) as the object other dialects carry."""
    if isinstance(raw, dict):
        return raw
    try:
        value = orjson.loads(raw or "{}")
    except (orjson.JSONDecodeError, TypeError):
        return {"_raw": raw}  # a model's malformed JSON, kept rather than lost
    if value is None:
        return {}  # "null": a call without arguments (Cohere's way of saying so)
    return value if isinstance(value, dict) else {"_value": value}


def translate_reply(call: Call, reply: Reply, w: ChunkWriter) -> None:
    """The reply's OpenAI stream turned into the writer's events; a chunk it cannot read is a 502."""
    assert reply.stream is not None
    kind = call.deployment.provider_type if call.deployment is not None else "upstream"
    reply.stream = readable(translate_stream(reply.stream, w, lambda: reply.usage), kind)


def name_dropped(headers: dict[str, str], dropped: list[str]) -> None:
    """Add the request fields a dialect's translation left out to ``x-relaygate-dropped-params``."""
    if dropped:
        earlier = headers.get(DROPPED_HEADER)
        headers[DROPPED_HEADER] = ",".join(dropped) if not earlier else f"{earlier},{','.join(dropped)}"
