"""Gemini's API (``google-genai``, REST) in front of any configured model.

``POST /v1beta/models/{model}:generateContent`` and ``:streamGenerateContent`` (``?alt=sse``: SSE; without:
one JSON array, streamed as it comes). The request becomes an OpenAI-format chat call that goes through the
whole pipeline (keys, limits, cache, routing, fallbacks, the log); the reply comes back as a
GenerateContentResponse, or as Gemini's events translated chunk by chunk. ``:embedContent`` and
``:batchEmbedContents`` of texts are embeddings calls. The original request rides along
(``Call.native``): a Gemini deployment sends it as it is and its answer is relayed untouched. The key is a
relaygate key, sent as ``x-goog-api-key`` (the SDK's way), ``?key=`` or ``Authorization: Bearer``. Errors
use Google's shape. ``:countTokens`` is answered from the gateway's own estimate of the prompt.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson

from relaygate.api.chat import chat_call, native_call
from relaygate.api.common import object_body, reply_headers
from relaygate.api.dialects import ForeignDialect, answer
from relaygate.api.dialects import embed as dialect_embed
from relaygate.api.gemini.translate import (
    EventWriter,
    camel,
    error_body,
    error_event,
    obj,
    to_gemini_response,
    to_openai_request,
)
from relaygate.api.gemini.translate import (
    texts as texts_of,
)
from relaygate.api.query import Query
from relaygate.auth.authenticator import allowed_deployments, presented_key
from relaygate.core.aiter import aclose
from relaygate.core.call import Call, Dialect, NativeRequest, Reply
from relaygate.core.errors import BadRequest, GatewayError, NotFound
from relaygate.core.pricing import Pricing
from relaygate.providers.streaming import SSEDecoder
from relaygate.server.http import Request, Response, StreamResponse

if TYPE_CHECKING:
    from relaygate.auth.principal import Principal
    from relaygate.gateway import Gateway

GENERATE, STREAM, COUNT = "generateContent", "streamGenerateContent", "countTokens"
EMBED, BATCH_EMBED = "embedContent", "batchEmbedContents"
# Gemini's task types under the names every embeddings provider that reads input_type takes (Cohere's);
# the others go lower-cased, as Gemini's own take them
_INPUT_TYPES = {"RETRIEVAL_QUERY": "search_query", "RETRIEVAL_DOCUMENT": "search_document",
                "CLASSIFICATION": "classification", "CLUSTERING": "clustering"}


def gemini_error(err: GatewayError) -> Response:
    return Response(orjson.dumps(error_body(err)), err.status, dict(err.headers))


async def _caller(gw: Gateway, req: Request, query: Query | None) -> Principal | None:
    """The relaygate key, as Google's clients send theirs: ``x-goog-api-key``, else ``?key=``."""
    if gw.auth is None:
        return None
    secret = req.headers.get("x-goog-api-key") or (query.text("key", 1000) if query is not None else None) \
        or presented_key(req.headers)
    return gw.auth.quick(secret) or await gw.auth.authenticate(secret)


def _target(req: Request) -> tuple[str, str]:
    """(model, method) of ``…/models/{model}:{method}``."""
    model, _, method = req.params.get("rest", "").rpartition(":")
    model = model.removeprefix("models/")
    if not model or method not in (GENERATE, STREAM, COUNT, EMBED, BATCH_EMBED):
        raise NotFound(f"Method {method[:80]!r} of model {model[:200]!r} is not found; this gateway serves "
                       "generateContent, streamGenerateContent, countTokens, embedContent and batchEmbedContents",
                       code="unknown_route")
    return model, method


async def models_call(gw: Gateway, req: Request) -> Response | StreamResponse:
    try:
        query = Query(req.query) if req.query else None
        key = await _caller(gw, req, query)  # before anything else: no key, no parsing
        model, method = _target(req)
        body = object_body(await req.json(gw.config.server.max_body_bytes))
        if method == COUNT:
            return _count(gw, req, body, model, key)
        if method in (EMBED, BATCH_EMBED):
            return await _embed(gw, req, body, model, key, method == BATCH_EMBED)
        stream = method == STREAM
        call = _read(gw, req, body, model, stream, key)
        reply = await gw.handle(call)
    except GatewayError as e:
        return gemini_error(e)
    assert call.native is not None
    return _respond(call, reply, call.native.dropped, stream and (query is None or query.text("alt", 20) != "sse"))


def _read(gw: Gateway, req: Request, body: dict[str, Any], model: str, stream: bool,
          key: Principal | None) -> Call:
    """The call for a generateContent request: the original, and its OpenAI chat body (for any other
    provider) made when asked for."""
    native = NativeRequest(Dialect.GEMINI, body)
    return native_call(gw, req, native, lambda: to_openai_request(body, model, stream), model, stream, key)


def _count(gw: Gateway, req: Request, body: dict[str, Any], model: str, key: Principal | None) -> Response:
    """``countTokens``: the prompt as the gateway's limits count it (no upstream call, nothing to bill), for
    a model the key may use."""
    inner = body.get("generateContentRequest")
    request, _ = to_openai_request(inner if isinstance(inner, dict) else body, model, False)
    allowed_deployments(gw.table, chat_call(gw, req, request, key), key)
    return Response(orjson.dumps({"totalTokens": Pricing.prompt_tokens(request)}), 200, {})


def _writer(call: Call) -> EventWriter:
    return EventWriter(call.model)


GEMINI = ForeignDialect(_writer, to_gemini_response, gemini_error, error_event)


async def _embed(gw: Gateway, req: Request, body: dict[str, Any], model: str, key: Principal | None,
                 batch: bool) -> Response:
    """``embedContent`` / ``batchEmbedContents`` of texts, as an embeddings call (one for the batch)."""
    items = body.get("requests") if batch else [body]
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise BadRequest("* BatchEmbedContentsRequest.requests: requests is not specified", param="requests")
    items = [camel(i) for i in items]
    texts = [" ".join(texts_of(i.get("content"), f"requests[{n}].content")) for n, i in enumerate(items)]
    first = items[0]
    options = obj(first.get("embedContentConfig")) or first
    task = options.get("taskType")
    call, reply, vectors, _ = await dialect_embed(
        gw, req, key, model, texts, options.get("outputDimensionality"),
        _INPUT_TYPES.get(task, task.lower()) if isinstance(task, str) else None)
    out = {"embeddings": [{"values": v} for v in vectors]} if batch else {"embedding": {"values": vectors[0]}}
    return Response(orjson.dumps(out), 200, reply_headers(call, reply), reply=reply)


def _respond(call: Call, reply: Reply, dropped: list[str], as_array: bool) -> Response | StreamResponse:
    resp = answer(GEMINI, call, reply, reply.native, dropped)
    if as_array and isinstance(resp, StreamResponse):
        assert reply.stream is not None
        reply.stream = _as_array(reply.stream)
        reply.media_type = "application/json"
        resp.error_event = _array_error
    return resp


async def _as_array(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Gemini's events as the one JSON array ``streamGenerateContent`` answers without ``alt=sse``, each
    element sent as it comes."""
    decoder = SSEDecoder()
    first = True
    try:
        async for piece in stream:
            out = []
            for _, data in decoder.feed(piece):
                out.append((b"[" if first else b",\r\n") + data)
                first = False
            if out:
                yield b"".join(out)
        yield b"[]" if first else b"]"
    finally:
        await aclose(stream)


def _array_error(err: GatewayError) -> bytes:
    """The element that ends an array stream that failed after its first byte."""
    return b",\r\n" + orjson.dumps(error_body(err)) + b"]"


ROUTES = [
    ("POST", "/v1beta/models/{rest}", models_call),
    ("POST", "/v1/models/{rest}", models_call),
]
