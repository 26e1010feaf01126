"""``POST /v1/messages``: Anthropic's Messages API in front of any configured model.

The request becomes an OpenAI-format chat call that goes through the whole pipeline; the reply comes
back as an Anthropic Message, or as Anthropic's SSE events translated chunk by chunk. The original request
rides along (``Call.anthropic_request``): an Anthropic deployment sends it as it is and its answer is relayed
untouched (``Reply.anthropic_native``), so nothing is lost when Claude serves the call. Clients may send
either ``anthropic-version`` (2023-06-01 or 2026-10-21) and their key as ``x-api-key`` or
``Authorization: Bearer``; sampling parameters are accepted under both versions (the model decides).
Errors on this route use Anthropic's error shape.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from relaygate.api.anthropic.translate import (
    EventWriter,
    anthropic_error_type,
    error_event,
    to_anthropic_message,
    to_openai_request,
)
from relaygate.api.chat import chat_call
from relaygate.api.chunks import chat_completion, once, translate_stream, whole_as_chunk
from relaygate.api.common import bill_delivered, object_body, reply_headers
from relaygate.auth.authenticator import caller
from relaygate.core import jsonvalue, shapes
from relaygate.core.call import Call, Reply, Route
from relaygate.core.errors import BadRequest, GatewayError, Unavailable
from relaygate.core.shapes.anthropic import MessagesRequest
from relaygate.providers.anthropic.wire import error_body
from relaygate.providers.base import ANSWER_ERRORS, readable, unreadable
from relaygate.providers.openai_format import DROPPED_HEADER
from relaygate.server.http import Request, Response, StreamResponse

if TYPE_CHECKING:
    from relaygate.gateway import Gateway


def anthropic_error(err: GatewayError, request_id: str) -> Response:
    message = err.message
    if err.kind == "context_too_long" and not message.startswith("prompt is too long"):
        message = "prompt is too long: " + message  # Anthropic's wording, which clients act on (compaction)
    body = error_body(anthropic_error_type(err), message, request_id)
    return Response(orjson.dumps(body), err.status, {**err.headers, "request-id": request_id})


async def _read(gw: Gateway, req: Request, route: Route = Route.CHAT) -> tuple[Call, list[str]]:
    """The call for the client's Anthropic request: an OpenAI chat body (for any provider) plus the
    original (for Anthropic deployments, which take it as it is); and the fields the translation left out."""
    count = route is Route.COUNT_TOKENS
    key = await caller(gw.auth, req.headers)  # before the body: no key, no parsing
    limit = gw.config.server.max_body_bytes
    body = object_body(await req.json(limit))
    shapes.check(body, MessagesRequest, dotted=True)
    try:  # translated to a chat request (and maybe on to another dialect): room to nest it deeper
        jsonvalue.check(body, jsonvalue.ROOM)
    except jsonvalue.JSONRejected as e:
        raise BadRequest(f"the request is not accepted: {e.message}", param=e.param) from None
    keep_cache = b'"cache_control"' in await req.body(limit) and _understands_cache_control(gw, body)
    request, dropped = to_openai_request({**body, "max_tokens": 1} if count else body, keep_cache)
    if count:
        del request["max_completion_tokens"]  # counting has no output
    if isinstance(body.get("provider"), str):
        request["provider"] = body["provider"]  # relaygate's explicit-provider field, as on /chat
    call = chat_call(gw, req, request, key, route=route)
    call.anthropic_request = body
    return call, dropped


async def messages(gw: Gateway, req: Request) -> Response | StreamResponse:
    try:
        call, dropped = await _read(gw, req)
        call.wants_usage = call.stream  # the usage chunk feeds the final message_delta
        reply = await gw.handle(call)
    except GatewayError as e:
        return anthropic_error(e, req.id)
    if reply.stream is not None:
        bill_delivered(call, reply)
    headers = reply_headers(call, reply)
    headers["request-id"] = req.id
    if reply.anthropic_native:  # the deployment answered in Anthropic's own format: relay it as it is
        if reply.stream is not None:
            return StreamResponse(reply, headers, error_event)
        return Response(reply.body or b"", 200, headers, reply=reply)
    if dropped:
        earlier = headers.get(DROPPED_HEADER)
        headers[DROPPED_HEADER] = ",".join(dropped) if not earlier else f"{earlier},{','.join(dropped)}"
    if reply.stream is not None:
        kind = call.deployment.provider_type if call.deployment is not None else "upstream"
        reply.stream = readable(translate_stream(reply.stream, EventWriter(call.model), lambda: reply.usage), kind)
        return StreamResponse(reply, headers, error_event)
    try:
        data = chat_completion(reply)
    except Unavailable as bad:
        return anthropic_error(bad, req.id)
    if call.stream:  # the upstream answered whole: deliver it as one burst of events
        return _replay(call, reply, data, headers)
    try:
        message = orjson.dumps(to_anthropic_message(data, reply.usage, call.model))
    except ANSWER_ERRORS as e:  # orjson's errors are TypeErrors too (a usage count beyond 64 bits)
        err = unreadable(call.deployment.provider_type if call.deployment is not None else "upstream", e)
        reply.finish(err)
        return anthropic_error(err, req.id)
    return Response(message, 200, headers, reply=reply)


def _understands_cache_control(gw: Gateway, body: dict[str, Any]) -> bool:
    """Whether every deployment that may serve the call (fallbacks included) takes ``cache_control``."""
    model, provider = body.get("model"), body.get("provider")
    if not isinstance(model, str):
        return False
    try:
        deps = gw.table.resolve(Call(id="", route=Route.CHAT, model=model, body={},
                                     provider=provider if isinstance(provider, str) else None))
    except GatewayError:
        return False
    names = {deps[0].model_name}
    for m in gw.config.models:
        if m.name in names:
            names.update(n for f in m.fallbacks for n in f.models)
            break
    return all(d.provider.cache_control for n in names for d in gw.table.models.get(n, ()))


async def count_tokens(gw: Gateway, req: Request) -> Response:
    """``POST /v1/messages/count_tokens``: served by deployments that can count (Anthropic's)."""
    try:
        call, _ = await _read(gw, req, Route.COUNT_TOKENS)
        reply = await gw.handle(call)
    except GatewayError as e:
        return anthropic_error(e, req.id)
    headers = reply_headers(call, reply)
    headers["request-id"] = req.id
    return Response(reply.body or b"", 200, headers, reply=reply)


def _replay(call: Call, reply: Reply, data: dict[str, Any], headers: dict[str, str]) -> StreamResponse:
    w = EventWriter(call.model)
    reply.stream = once(w.chunk(whole_as_chunk(data)) + w.end(reply.usage))
    reply.media_type = "text/event-stream"
    return StreamResponse(reply, headers, error_event)


ROUTES = [
    ("POST", "/v1/messages", messages),
    ("POST", "/v1/messages/count_tokens", count_tokens),
]
