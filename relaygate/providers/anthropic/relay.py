"""Relaying a Messages answer as it came (a ``/v1/messages`` client's, or an InvokeModel client's Anthropic
body): its usage, and its events passed on with only ``message_delta`` parsed. Shared by the Anthropic
provider and by Bedrock's, which serves the same answers from Claude on Bedrock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from relaygate.core.call import Reply, Usage, delivered_of
from relaygate.core.errors import GatewayError, Unavailable
from relaygate.providers.delivered import HOLD_EVENTS, anthropic_deltas
from relaygate.providers.streaming import sse_frame

ErrorOf = Callable[[dict[str, Any]], GatewayError]  # an ``error`` event's data as the gateway's error


def usage_of(u: Any) -> Usage | None:
    """An Anthropic usage object as ours: prompt tokens include cache reads and writes (as OpenAI's do)."""
    if not isinstance(u, dict):
        return None
    return Usage.cache_apart(u.get("input_tokens"), u.get("output_tokens"), u.get("cache_read_input_tokens"),
                             u.get("cache_creation_input_tokens"))


async def await_start(events: AsyncIterator[tuple[str, bytes]], error_of: ErrorOf) -> tuple[dict[str, Any], bytes] | None:
    """``message_start``'s message and raw data (None if the stream ended first)."""
    async for event, data in events:
        if event == "message_start":
            return orjson.loads(data).get("message") or {}, data
        if event == "error":
            raise error_of(orjson.loads(data))
    return None


async def relay(events: AsyncIterator[tuple[str, bytes]], start: dict[str, Any], start_raw: bytes, reply: Reply,
                error_of: ErrorOf, kind: str) -> AsyncIterator[bytes]:
    """The Messages events as they came, as SSE; only ``message_delta`` is parsed (for the usage); the deltas
    are held for their text to be counted should the usage never come (``providers/delivered.py``)."""
    usage: dict[str, Any] = dict(start.get("usage") or {})
    delivered = delivered_of(reply)
    held = delivered.hold(anthropic_deltas)
    yield sse_frame(start_raw, b"message_start")
    async for event, data in events:
        if event == "content_block_delta":
            held.append(data)
            if len(held) > HOLD_EVENTS:
                delivered.fold()
        elif event == "message_delta":
            usage.update(orjson.loads(data).get("usage") or {})
            reply.usage = usage_of(usage)
        elif event == "error":
            raise error_of(orjson.loads(data))  # the route writes the error event
        yield sse_frame(data, event.encode())
        if event == "message_stop":
            return
    raise Unavailable(f"upstream {kind} stream ended before message_stop", status=502)
