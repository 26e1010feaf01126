"""OpenAI's Responses API sent as it is to an upstream that serves it (``responses_native``): the request body
with the model rewritten, the answer relayed whole or event by event as it arrives, its usage read from the
final event (``response.completed``, ``.incomplete`` or ``.failed``), the only one decoded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from relaygate.core.call import Call, Reply, Usage
from relaygate.providers.openai_format import usage_at
from relaygate.providers.streaming import EventCutter, SSEDecoder, UpstreamBody


def native_body(call: Call, model: str, chain: bool = True) -> dict[str, Any]:
    """The upstream request: the call's Responses request (a copy: a fallback to another deployment sends its
    own) with ``model`` rewritten; chained on the upstream's own stored response when this deployment answered
    the previous turn; held to the gateway's output cap where the client set none."""
    native = call.responses_request
    assert native is not None and call.deployment is not None
    body = dict(native)
    body["model"] = model
    link = call.responses_chain if chain else None
    if link is not None and link.deployment == call.deployment.name:
        body["previous_response_id"] = link.upstream_id
        body["input"] = link.input
    cap = call.output_cap
    if cap is not None and "max_output_tokens" not in body:
        body["max_output_tokens"] = cap
    if call.stream:
        body["stream"] = True
    else:
        body.pop("stream", None)
    return body


async def relay(body: UpstreamBody, reply: Reply) -> AsyncIterator[bytes]:
    """The upstream's events as they come, whole events at a time; the usage of the one that carries it (the
    final event: the ``"usage":null`` of the others is not one) noted on ``reply``."""
    cutter = EventCutter()
    try:
        async for chunk in body:
            events = chunk if cutter.idle and chunk.endswith(b"\n\n") else cutter.feed(chunk)
            if usage_at(events, 0) >= 0:
                note_usage(events, reply)
            if events:
                yield events
        events = cutter.end()
        if usage_at(events, 0) >= 0:
            note_usage(events, reply)
        if events:
            yield events
    finally:
        body.close()


def note_usage(events: bytes, reply: Reply) -> None:
    """The usage of the response object that whole SSE ``events`` carry (decoded only there)."""
    decoder = SSEDecoder()
    for _, data in [*decoder.feed(events), *decoder.end()]:
        if usage_at(data, 0) < 0:
            continue
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        response = obj.get("response") if isinstance(obj, dict) else None
        usage = Usage.from_openai(response.get("usage")) if isinstance(response, dict) else None
        if usage is not None:
            reply.usage = usage
