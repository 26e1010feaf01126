"""The built-in ``demo`` model: answered in-process by the OpenAI emulator's logic, no network."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import orjson

from relaygate.core.call import Call, Reply, Route, Usage
from relaygate.providers.base import SSE_DONE, Provider
from relaygate.testing.openai import complete, stream_chunks

PREFIX = "[relaygate demo model, not a real LLM] You said: "


class DemoProvider(Provider):
    """Echoes the conversation the way the OpenAI emulator does; useful to try a client offline."""

    routes: ClassVar[frozenset[Route]] = frozenset({Route.CHAT})

    async def chat(self, call: Call) -> Reply:
        body = {**call.body, "model": call.model}
        if not call.stream:
            data = complete(body, PREFIX)
            return Reply(body=orjson.dumps(data), usage=Usage.from_openai(data["usage"]),
                         first_byte_at=time.monotonic())
        body["stream_options"] = {"include_usage": True}
        chunks = stream_chunks(body, PREFIX)
        reply = Reply(media_type="text/event-stream", first_byte_at=time.monotonic())
        reply.stream = self._emit(chunks, reply, call.wants_usage)
        return reply

    @staticmethod
    async def _emit(chunks: list[dict[str, Any]], reply: Reply, keep_usage: bool) -> AsyncIterator[bytes]:
        for c in chunks:
            if not c["choices"]:
                reply.usage = Usage.from_openai(c.get("usage"))
                if not keep_usage:
                    continue
            elif not keep_usage:
                c.pop("usage", None)
            yield b"data: " + orjson.dumps(c) + b"\n\n"
        yield SSE_DONE
