"""The built-in ``demo`` model: the echo model (providers/echo.py, which the OpenAI emulator answers with too),
answered in-process, no network."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import orjson

from relaygate.core.call import Call, Reply, Route, Usage, delivered_of
from relaygate.core.errors import BadRequest, ContextTooLong
from relaygate.providers.base import Provider
from relaygate.providers.echo import complete, stream_chunks
from relaygate.providers.streaming import SSE_DONE, sse

PREFIX = "[relaygate demo model, not a real LLM] You said: "
# the demo echoes the prompt: its answer is cut like a real model's output, and it makes at most 8 choices
# (as Gemini), so that an answer stays under 1 MiB whatever the request (logprobs included)
MAX_ANSWER_CHARS = 4096
MAX_CHOICES = 8
# its context window (about gpt-4o's 128k tokens): reading a longer prompt would only stall the event loop
MAX_PROMPT_CHARS = 512 * 1024


def prompt_chars(body: dict[str, Any]) -> int:
    """The characters of text in the messages (the API layer checked that they are objects)."""
    n = 0
    for m in body.get("messages") or ():
        content = m.get("content")
        if isinstance(content, str):
            n += len(content)
        elif isinstance(content, list):
            n += sum(len(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return n


class DemoProvider(Provider):
    """Echoes the conversation the way the OpenAI emulator does; useful to try a client offline."""

    routes: ClassVar[frozenset[Route]] = frozenset({Route.CHAT})

    async def chat(self, call: Call) -> Reply:
        n = call.body.get("n")
        if isinstance(n, int) and n > MAX_CHOICES:
            raise BadRequest(f"Invalid 'n': integer above maximum value. The demo model makes at most {MAX_CHOICES} "
                             f"choices, but got {n}.", param="n", code="integer_above_max_value")
        size = prompt_chars(call.body)
        if size > MAX_PROMPT_CHARS:
            raise ContextTooLong(f"the demo model takes prompts of up to {MAX_PROMPT_CHARS} characters; this one "
                                 f"has {size}", param="messages")
        body = {**call.body, "model": call.model}
        if not call.stream:
            data = complete(body, PREFIX, MAX_ANSWER_CHARS)
            return Reply(body=orjson.dumps(data), usage=Usage.from_openai(data["usage"]),
                         first_byte_at=time.monotonic())
        body["stream_options"] = {"include_usage": True}
        chunks = stream_chunks(body, PREFIX, MAX_ANSWER_CHARS)
        reply = Reply(media_type="text/event-stream", first_byte_at=time.monotonic())
        reply.stream = self._emit(chunks, reply, call.wants_usage)
        return reply

    @staticmethod
    async def _emit(chunks: list[dict[str, Any]], reply: Reply, keep_usage: bool) -> AsyncIterator[bytes]:
        delivered = delivered_of(reply)
        for c in chunks:
            for choice in c["choices"]:  # the text counted, for a stream cut before its usage
                delta = choice.get("delta") or {}
                text = delta.get("content") or "".join(tc["function"].get("arguments") or ""
                                                        for tc in delta.get("tool_calls") or ())
                delivered.text(len(text))
            if not c["choices"]:
                reply.usage = Usage.from_openai(c.get("usage"))
                if not keep_usage:
                    continue
            elif not keep_usage:
                c.pop("usage", None)
            yield sse(c)
        yield SSE_DONE
