"""How a foreign client dialect (Anthropic's Messages, Gemini, Cohere v2) is answered from a reply: relayed
as it is when the deployment answered in that dialect, else translated from OpenAI's format, whole or
chunk by chunk, with the dialect's own error shapes; and the embeddings calls the dialects make."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from relaygate.api.chunks import (
    ChunkWriter,
    chat_completion,
    name_dropped,
    once,
    translate_reply,
    whole_as_chunk,
)
from relaygate.api.common import bill_delivered, reply_headers
from relaygate.api.embeddings import validate_embeddings
from relaygate.core.call import Call, Reply, Route, Usage
from relaygate.core.errors import GatewayError, Unavailable
from relaygate.providers.base import ANSWER_ERRORS, unreadable
from relaygate.server.http import Request, Response, StreamResponse

if TYPE_CHECKING:
    from relaygate.auth.principal import Principal
    from relaygate.gateway import Gateway

# providers that read an embeddings request's ``input_type`` (OpenAI-compatible servers would refuse it)
INPUT_TYPE_READERS = frozenset(("cohere", "gemini", "vertex", "bedrock"))


@dataclass(frozen=True, slots=True)
class ForeignDialect:
    """What answering in a dialect takes: its stream writer, its whole answer, its error response and the
    error event that ends a stream which failed after its first byte."""

    writer: Callable[[Call], ChunkWriter]
    whole: Callable[[dict[str, Any], Usage | None, str], dict[str, Any]]  # (completion, usage, model)
    error: Callable[[GatewayError], Response]
    error_event: Callable[[GatewayError], bytes]


def answer(d: ForeignDialect, call: Call, reply: Reply, native: bool, dropped: list[str],
           extra: dict[str, str] | None = None) -> Response | StreamResponse:
    """The client's response to ``reply``: ``native`` when it is in the dialect already (relayed
    untouched); ``dropped`` names the request fields the translation left out; ``extra`` headers added."""
    if reply.stream is not None:
        bill_delivered(call, reply)
    headers = reply_headers(call, reply)
    if extra:
        headers.update(extra)
    if native:
        if reply.stream is not None:
            return StreamResponse(reply, headers, d.error_event)
        return Response(reply.body or b"", 200, headers, reply=reply)
    name_dropped(headers, dropped)
    if reply.stream is not None:
        translate_reply(call, reply, d.writer(call))
        return StreamResponse(reply, headers, d.error_event)
    try:
        data = chat_completion(reply)
    except Unavailable as bad:
        return d.error(bad)
    if call.stream:  # the upstream answered whole (the cache): deliver it as one burst of events
        w = d.writer(call)
        reply.stream = once(w.chunk(whole_as_chunk(data)) + w.end(reply.usage))
        reply.media_type = "text/event-stream"
        return StreamResponse(reply, headers, d.error_event)
    try:
        body = orjson.dumps(d.whole(data, reply.usage, call.model))
    except ANSWER_ERRORS as e:  # orjson's errors are TypeErrors too (a usage count beyond 64 bits)
        err = unreadable(call.deployment.provider_type if call.deployment is not None else "upstream", e)
        reply.finish(err)
        return d.error(err)
    return Response(body, 200, headers, reply=reply)


async def embed(gw: Gateway, req: Request, key: Principal | None, model: Any, texts: Any,
                dimensions: Any = None, input_type: Any = None) -> tuple[Call, Reply, list[list[float]], int]:
    """An embeddings call for a dialect's texts through the pipeline: (call, reply, the vectors in order,
    the prompt tokens). ``input_type`` goes on only where every deployment that may serve the call reads it."""
    request: dict[str, Any] = {"model": model, "input": texts, "encoding_format": "float"}
    if dimensions is not None:
        request["dimensions"] = dimensions
    validate_embeddings(request)
    call = Call(id=req.id, route=Route.EMBEDDINGS, model=request["model"], body=request, headers=req.headers,
                client_ip=req.client_ip, key=key, deadline=time.monotonic() + gw.config.server.request_timeout)
    if isinstance(input_type, str) and _reads_input_type(gw, call):
        request["input_type"] = input_type
    reply = await gw.handle(call)
    try:
        data = orjson.loads(reply.body or b"")
        vectors = [item["embedding"] for item in sorted(data["data"], key=lambda d: d["index"])]
        tokens = (data.get("usage") or {}).get("prompt_tokens") or 0
    except (*ANSWER_ERRORS, orjson.JSONDecodeError) as e:
        err = unreadable(call.deployment.provider_type if call.deployment is not None else "upstream", e)
        reply.finish(err)
        raise err from None
    return call, reply, vectors, tokens


def _reads_input_type(gw: Gateway, call: Call) -> bool:
    """Whether every deployment that may serve the call reads ``input_type`` (else it is not sent)."""
    try:
        deps = gw.table.resolve(call)
    except GatewayError:
        return False
    return all(d.provider_type in INPUT_TYPE_READERS for d in deps)
