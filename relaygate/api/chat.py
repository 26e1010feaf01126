"""``POST /v1/chat/completions``: validate just enough, then pass the body through untouched."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from relaygate.api.common import bill_delivered, check, check_int, object_body, pop_provider, require, respond
from relaygate.auth.authenticator import caller
from relaygate.core import jsonvalue
from relaygate.core.call import Call, NativeCall, NativeRequest, Route
from relaygate.core.errors import BadRequest
from relaygate.server.http import Request, Response, StreamResponse

if TYPE_CHECKING:
    from relaygate.auth.principal import Principal
    from relaygate.gateway import Gateway


# OpenAI's ranges (its OpenAPI spec, CreateChatCompletionRequest), the widest any provider takes: Gemini's
# candidateCount stops at 8, Anthropic, Bedrock and Cohere return one choice. Beyond them, one small request
# could make an answer of any size.
MAX_CHOICES = 128
MAX_TOP_LOGPROBS = 20


def validate_chat(body: dict[str, Any]) -> None:
    """Reject what no upstream could serve (``n`` and ``top_logprobs`` beyond OpenAI's ranges too); everything
    else (tools, logprobs, …) passes untouched."""
    model = body.get("model")
    if type(model) is not str or not model:  # (the usual request: two lookups, not two calls)
        if not require(body, "model", str, "a string"):
            raise BadRequest("'model' must not be empty", param="model")
    messages = body.get("messages")
    if type(messages) is not list or not messages:
        messages = require(body, "messages", list, "an array of messages")
        if not messages:
            raise BadRequest("'messages' must contain at least one message", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadRequest(f"messages[{i}] must be an object", param=f"messages[{i}]", code="invalid_type")
        role = m.get("role")
        if not isinstance(role, str):
            raise BadRequest(f"messages[{i}].role must be a string", param=f"messages[{i}].role",
                             code="invalid_type")
    # the typed fields a request has, each looked at once by its exact type (as JSON parses to); any other
    # (a wrong type, a subclass, a number to bound) goes through the checks in order: the first error is said
    for name in _TYPED.keys() & body.keys():
        if type(body[name]) not in _TYPED[name]:
            _check_typed(body)
            break


_TYPED: dict[str, tuple[type, ...]] = {
    "stream": (bool, type(None)), "stream_options": (dict, type(None)), "tools": (list, type(None)),
    "temperature": (int, float, type(None)), "max_tokens": (int, type(None)),
    "max_completion_tokens": (int, type(None)), "n": (type(None),), "top_logprobs": (type(None),)}


def _check_typed(body: dict[str, Any]) -> None:
    check(body, "stream", bool, "a boolean")
    check(body, "stream_options", dict, "an object")
    check_int(body, "n", 1, MAX_CHOICES)
    check_int(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    check(body, "tools", list, "an array")
    check(body, "temperature", (int, float), "a number")
    check(body, "max_tokens", int, "an integer")
    check(body, "max_completion_tokens", int, "an integer")


def chat_call(gw: Gateway, req: Request, body: dict[str, Any], key: Principal | None,
              route: Route = Route.CHAT) -> Call:
    provider = pop_provider(body)
    validate_chat(body)
    stream = bool(body.get("stream"))
    opts = body.get("stream_options")
    now = time.monotonic()
    # in Call's field order, up to ``key`` (binding these by name to its ~40 parameters took twice as long)
    return Call(req.id, route, body["model"], body, stream, req.headers, req.client_ip, provider,
                bool(stream and isinstance(opts, dict) and opts.get("include_usage")), now,
                now + gw.request_timeout, key)


def native_call(gw: Gateway, req: Request, native: NativeRequest,
                translate: Callable[[], tuple[dict[str, Any], list[str]]], model: str, stream: bool,
                key: Principal | None) -> NativeCall:
    """A foreign client's chat call (Gemini, Cohere, Bedrock Converse): its own body rides along, the chat
    body is made (``translated_body``) only when something reads it (core/call.py ``NativeCall``). A stream
    asks for the usage chunk: it feeds each dialect's last event."""
    return NativeCall(native, lambda: translated_body(native, translate), req.id, model, stream, req.headers,
                      req.client_ip, key, stream, time.monotonic() + gw.request_timeout)


def translated_body(native: NativeRequest, translate: Callable[[], tuple[dict[str, Any], list[str]]]) -> dict[str, Any]:
    """The chat body of a foreign client's body (``native.body``): checked for room to nest it deeper (the
    translation may go on to another dialect), translated, checked as a chat request; the fields left out
    are named in ``native.dropped``."""
    jsonvalue.room_to_translate(native.body)
    request, dropped = translate()
    pop_provider(request)
    validate_chat(request)
    native.dropped[:] = dropped
    return request


async def chat_completions(gw: Gateway, req: Request) -> Response | StreamResponse:
    key = await caller(gw.auth, req.headers)  # before the body: no key, no parsing
    body = object_body(await req.json(gw.max_body_bytes))
    call = chat_call(gw, req, body, key)
    call.raw = req.raw
    reply = await gw.handle(call)
    if reply.stream is not None:
        bill_delivered(call, reply)
    return respond(call, reply)


ROUTES = [
    ("POST", "/v1/chat/completions", chat_completions),
    ("POST", "/chat/completions", chat_completions),
]
