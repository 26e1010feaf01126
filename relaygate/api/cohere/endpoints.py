"""Cohere's API v2 (``cohere.ClientV2``) in front of any configured model: ``POST /v2/chat`` and
``POST /v2/embed``.

A chat request becomes an OpenAI-format chat call that goes through the whole pipeline (keys, limits, cache,
routing, fallbacks, the log); the reply comes back as Cohere's chat response, or as its v2 stream events
translated chunk by chunk. The original request rides along (``Call.native``): a Cohere deployment sends it
as it is and its answer is relayed untouched. Embeddings are translated both ways (floats). The key is a
relaygate key as ``Authorization: Bearer``. Errors use Cohere's shape ``{"id", "message"}``.
"""

from __future__ import annotations

import base64
import struct
from typing import TYPE_CHECKING, Any

import orjson

from relaygate.api.chat import native_call
from relaygate.api.cohere.translate import (
    EventWriter,
    error_body,
    error_event,
    message_id,
    to_cohere_response,
    to_openai_request,
)
from relaygate.api.common import object_body, reply_headers
from relaygate.api.dialects import ForeignDialect, answer
from relaygate.api.dialects import embed as dialect_embed
from relaygate.auth.authenticator import caller
from relaygate.core.call import Call, Dialect, NativeRequest
from relaygate.core.errors import BadRequest, GatewayError, Unsupported
from relaygate.server.http import Request, Response, StreamResponse

if TYPE_CHECKING:
    from relaygate.gateway import Gateway


def cohere_error(err: GatewayError) -> Response:
    return Response(orjson.dumps(error_body(err)), err.status, dict(err.headers))


def _writer(call: Call) -> EventWriter:
    """Text before a tool call is its plan (``tool-plan-delta``) when the request offered tools."""
    return EventWriter(plans=call.native is not None and bool(call.native.body.get("tools")))


COHERE = ForeignDialect(_writer, lambda data, usage, _: to_cohere_response(data, usage), cohere_error,
                        error_event)


async def chat(gw: Gateway, req: Request) -> Response | StreamResponse:
    try:
        key = await caller(gw.auth, req.headers)  # before the body: no key, no parsing
        body = object_body(await req.json(gw.config.server.max_body_bytes))
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("invalid request: model must be a non-empty string", param="model")
        native = NativeRequest(Dialect.COHERE, body)
        stream = bool(body.get("stream"))
        call = native_call(gw, req, native, lambda: to_openai_request(body), model, stream, key)
        reply = await gw.handle(call)
    except GatewayError as e:
        return cohere_error(e)
    return answer(COHERE, call, reply, reply.native, native.dropped)


async def embed(gw: Gateway, req: Request) -> Response | StreamResponse:
    """``/v2/embed`` of texts, as an embeddings call; the vectors come back as Cohere's ``float`` (and
    ``base64``) embeddings."""
    try:
        key = await caller(gw.auth, req.headers)
        body = object_body(await req.json(gw.config.server.max_body_bytes))
        texts = body.get("texts")
        if texts is None:
            raise Unsupported("invalid request: only texts can be embedded through this gateway (not images or "
                              "inputs)", param="texts")
        kinds = body.get("embedding_types") or ["float"]
        if not isinstance(kinds, list) or not kinds or any(k not in ("float", "base64") for k in kinds):
            raise Unsupported("invalid request: embedding_types may be float and base64 here",
                              param="embedding_types")
        call, reply, vectors, tokens = await dialect_embed(gw, req, key, body.get("model"), texts,
                                                           body.get("output_dimension"), body.get("input_type"))
    except GatewayError as e:
        return cohere_error(e)
    embeddings: dict[str, Any] = {}
    for kind in dict.fromkeys(kinds):
        embeddings[kind] = vectors if kind == "float" else [
            base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() for v in vectors]
    answer = {"id": message_id(), "embeddings": embeddings, "texts": texts,
              "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens}},
              "response_type": "embeddings_by_type"}
    return Response(orjson.dumps(answer), 200, reply_headers(call, reply), reply=reply)


ROUTES = [
    ("POST", "/v2/chat", chat),
    ("POST", "/v2/embed", embed),
]
