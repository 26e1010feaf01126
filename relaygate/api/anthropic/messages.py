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

from collections.abc import Callable
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
from relaygate.api.common import object_body, reply_headers
from relaygate.api.dialects import ForeignDialect, answer
from relaygate.auth.authenticator import caller
from relaygate.core import jsonvalue, shapes
from relaygate.core.call import Call, Route
from relaygate.core.errors import GatewayError
from relaygate.core.shapes.anthropic import MessagesRequest
from relaygate.providers.anthropic.wire import error_body
from relaygate.server.http import Request, Response, StreamResponse

if TYPE_CHECKING:
    from relaygate.auth.principal import Principal
    from relaygate.gateway import Gateway


def anthropic_error(err: GatewayError, request_id: str) -> Response:
    message = err.message
    if err.kind == "context_too_long" and not message.startswith("prompt is too long"):
        message = "prompt is too long: " + message  # Anthropic's wording, which clients act on (compaction)
    body = error_body(anthropic_error_type(err), message, request_id)
    return Response(orjson.dumps(body), err.status, {**err.headers, "request-id": request_id})


async def _read(gw: Gateway, req: Request, route: Route = Route.CHAT) -> tuple[Call, list[str]]:
    key = await caller(gw.auth, req.headers)  # before the body: no key, no parsing
    body = object_body(await req.json(gw.config.server.max_body_bytes))
    return await messages_call(gw, req, body, key, route)


async def messages_call(gw: Gateway, req: Request, body: dict[str, Any], key: Principal | None,
                        route: Route = Route.CHAT) -> tuple[Call, list[str]]:
    """The call for the client's Anthropic request (read by ``/v1/messages``, or by Bedrock's InvokeModel):
    an OpenAI chat body (for any provider) plus the original (for Anthropic deployments, which take it as it
    is); and the fields the translation left out."""
    count = route is Route.COUNT_TOKENS
    limit = gw.config.server.max_body_bytes
    shapes.check(body, MessagesRequest, dotted=True)
    jsonvalue.room_to_translate(body)
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
    return answer(messages_dialect(lambda e: anthropic_error(e, req.id)), call, reply, reply.anthropic_native, dropped, {"request-id": req.id})


def _writer(call: Call) -> EventWriter:
    return EventWriter(call.model)


def messages_dialect(error: Callable[[GatewayError], Response]) -> ForeignDialect:
    """Anthropic's Messages answers, with ``error`` for the error responses (Bedrock's InvokeModel has its own)."""
    return ForeignDialect(_writer, to_anthropic_message, error, error_event)


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


ROUTES = [
    ("POST", "/v1/messages", messages),
    ("POST", "/v1/messages/count_tokens", count_tokens),
]
