"""``/v1/responses``: OpenAI's Responses API in front of any configured model.

A request becomes an OpenAI-format chat call that goes through the whole pipeline (keys, limits, routing,
fallbacks, the request log), so every provider serves it; the answer comes back as a Response object, or as
the Responses API's events translated chunk by chunk. With ``store`` (the default) the Response and its
context are kept in the gateway's database, scoped to the caller's owner, for ``previous_response_id``,
``GET``, ``DELETE`` and ``input_items``; a ``conversation`` gets this turn's input and output appended.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson

from relaygate.api.chat import chat_call
from relaygate.api.chunks import chat_completion, once, translate_stream, whole_as_chunk
from relaygate.api.common import bill_delivered, object_body, pop_provider, reply_headers
from relaygate.api.objects import delete_owned, missing, owner, page_query, path_ids, slice_page
from relaygate.api.responses.conversations import conversation_context, conversation_id, keep_turn
from relaygate.api.responses.native import UPSTREAM, NativeAnswer, chain_of, native_request, serves_natively
from relaygate.api.responses.translate import (
    ResponseEvents,
    chat_request,
    finish,
    input_items,
    output_items,
    response_shell,
)
from relaygate.auth.authenticator import caller
from relaygate.core.aiter import aclose
from relaygate.core.call import Call, Route, delivered_of
from relaygate.core.errors import BadRequest, MethodNotAllowed, NotFound, Unsupported
from relaygate.providers.base import ANSWER_ERRORS, readable, unreadable
from relaygate.server.http import Request, Response, StreamResponse, json_response
from relaygate.store.objects import Stored, new_id, owner_of

if TYPE_CHECKING:
    from relaygate.auth.principal import Principal
    from relaygate.gateway import Gateway

REPLAYED = ("message", "function_call", "function_call_output", "reasoning")  # output items later turns send


async def create(gw: Gateway, req: Request) -> Response | StreamResponse:
    key = await caller(gw.auth, req.headers)  # before the body: no key, no parsing
    body = object_body(await req.json(gw.config.server.max_body_bytes))
    who = owner_of(key)
    if body.get("background"):
        raise Unsupported("background responses are not supported by this gateway; send the request without "
                          "'background' (or stream it)", param="background")
    for name in ("store", "stream"):
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise BadRequest(f"'{name}' must be a boolean", param=name, code="invalid_type")
    previous = body.get("previous_response_id")
    if previous is not None and not isinstance(previous, str):
        raise BadRequest("'previous_response_id' must be a string", param="previous_response_id",
                         code="invalid_type")
    conv = conversation_id(body.get("conversation"))
    if previous is not None and conv is not None:
        raise BadRequest("'previous_response_id' and 'conversation' cannot be used together",
                         param="previous_response_id", code="invalid_value")
    history: list[dict[str, Any]] = []
    chain = None
    if previous is not None:
        prev = await gw.objects.get("response", previous, who) if len(previous) <= 64 else None
        if prev is None:
            raise NotFound(f"Previous response with id '{previous[:64]}' not found.", param="previous_response_id",
                           code="previous_response_not_found")
        context = (prev.extra or {}).get("context") or []
        history = [*context, *(it for it in prev.data.get("output") or () if it.get("type") in REPLAYED)]
        chain = chain_of(prev.extra, body.get("input"))
    elif conv is not None:
        history = await conversation_context(gw, who, conv)
    truncation = body.get("truncation")
    if truncation is not None and truncation not in ("auto", "disabled"):
        raise BadRequest("'truncation' must be auto or disabled", param="truncation", code="invalid_value")
    call, inputs = _call(gw, req, body, key, history)
    call.responses_chain = chain
    call.truncation = truncation
    context = history + inputs
    store = body.get("store", True) is not False
    rid = new_id("resp_")
    created_at = int(time.time())  # the shell a translated answer fills is made once the answer is not native

    writes: list[asyncio.Future[None]] = []
    native = NativeAnswer(rid, previous, conv, lambda response: keep(response), store or conv is not None)

    def keep(response: dict[str, Any]) -> None:
        if store:
            extra: dict[str, Any] = {"context": context, "input": inputs}
            # a failed answer is never chained on upstream (a stream cut off may not be stored there)
            if native.upstream_id is not None and call.deployment is not None and response["status"] != "failed":
                extra[UPSTREAM] = {"deployment": call.deployment.name, "id": native.upstream_id}
            writes.append(gw.objects.save_later(Stored(id=rid, kind="response", owner=who, data=response,
                                                       extra=extra, seq=time.time_ns(), created_at=time.time())))
        if conv is not None and response["status"] != "failed":
            writes.extend(keep_turn(gw, who, conv, inputs, response["output"]))

    # truncation auto: the oldest turns dropped to fit the model's window (a native deployment does it itself)
    reply = await (gw.fit if truncation == "auto" and call.route is Route.CHAT else gw.handle)(call)
    if reply.stream is not None:
        bill_delivered(call, reply)  # a stream cut before its usage is billed for what it delivered
    headers = reply_headers(call, reply)
    kind = call.deployment.provider_type if call.deployment is not None else "upstream"
    if reply.responses_native:
        if reply.stream is not None:
            reply.stream = stored_before_the_end(readable(native.relay(reply.stream, delivered_of(reply)), kind),
                                                 writes)
            return StreamResponse(reply, headers, native.fail)
        try:
            out = native.whole(reply.body or b"")
        except ANSWER_ERRORS as e:
            err = unreadable(kind, e)
            reply.finish(err)
            raise err from None
        if writes:
            await asyncio.wait(writes)
        return Response(out, 200, headers, reply=reply)
    shell = response_shell(rid, created_at, body, previous, conv)
    if reply.stream is not None:
        events = ResponseEvents(shell, keep)
        stream = readable(translate_stream(reply.stream, events, lambda: reply.usage), kind)
        reply.stream = stored_before_the_end(stream, writes)
        return StreamResponse(reply, headers, events.fail)
    data = chat_completion(reply)
    if call.stream:  # the upstream answered whole (the cache): deliver it as one burst of events
        events = ResponseEvents(shell, keep)
        reply.stream = stored_before_the_end(once(events.chunk(whole_as_chunk(data)) + events.end(reply.usage)),
                                             writes)
        reply.media_type = "text/event-stream"
        return StreamResponse(reply, headers, events.fail)
    try:
        choice = data["choices"][0] if data["choices"] else {}
        shell["output"] = output_items(choice.get("message") or {})
        response = finish(shell, choice.get("finish_reason"), reply.usage)
        out = orjson.dumps(response)
    except ANSWER_ERRORS as e:
        err = unreadable(kind, e)
        reply.finish(err)
        raise err from None
    keep(response)
    if writes:
        await asyncio.wait(writes)
    return Response(out, 200, headers, reply=reply)


def _call(gw: Gateway, req: Request, body: dict[str, Any], key: Principal | None,
          history: list[dict[str, Any]]) -> tuple[Call, list[dict[str, Any]]]:
    """The pipeline call of a Responses request: a chat call (any deployment serves it; one serving the
    Responses API natively sends ``responses_request`` instead), or, for what chat cannot carry (built-in
    tools, items it has no form for), a ``responses`` call only such a deployment serves; without one, the
    translation's 400 that names what cannot be served."""
    given = body.get("input")
    try:
        inputs = input_items(given) if given is not None else []
        chat: dict[str, Any] | None = chat_request(body, history + inputs)
        refused: Unsupported | None = None
    except Unsupported as e:
        chat, refused = None, e
        inputs = input_items(given, keep_unknown=True) if given is not None else []
    if chat is not None:
        call = chat_call(gw, req, chat, key)
        if serves_natively(gw, call):
            call.responses_request = native_request(body, history)
    else:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("you must provide the 'model' parameter", param="model",
                             code="missing_required_parameter")
        native = native_request(body, history)
        provider = pop_provider({"provider": body.get("provider")})
        call = Call(id=req.id, route=Route.RESPONSES, model=model, body=native, stream=bool(body.get("stream")),
                    headers=req.headers, client_ip=req.client_ip, provider=provider, key=key,
                    deadline=time.monotonic() + gw.config.server.request_timeout, responses_request=native)
        if not serves_natively(gw, call):
            assert refused is not None
            raise refused
    return call, inputs


async def stored_before_the_end(stream: AsyncIterator[bytes],
                                writes: list[asyncio.Future[None]]) -> AsyncIterator[bytes]:
    """``stream``, whose last event (``response.completed``) goes out once the response is stored: a client
    that chains at once finds it on any worker or instance. Every event before it goes out as it comes (one
    upstream read may hold the whole answer: the events before the last are not held back with it)."""
    try:
        async for piece in stream:
            if writes:  # the response ended in this piece, with its last event
                last = piece.rfind(b"\n\nevent: ") + 2
                if last > 2:
                    yield piece[:last]
                    piece = piece[last:]
                await asyncio.wait(writes)
                writes.clear()
            yield piece
    finally:
        await aclose(stream)


async def _stored(gw: Gateway, who: str, rid: str) -> Stored:
    found = await gw.objects.get("response", rid, who)
    if found is None:
        raise missing("response", rid)
    return found


async def one(gw: Gateway, req: Request) -> Response:
    """``GET|DELETE /v1/responses/{id}``, ``GET …/input_items``, ``POST …/cancel``."""
    who = await owner(gw, req)  # before anything else: no key, no answer but 401
    parts = path_ids(req.params["rest"], "response")
    rid = parts[0]
    tail = "/".join(parts[1:])
    if tail == "" and req.method == "GET":
        return json_response((await _stored(gw, who, rid)).data)
    if tail == "" and req.method == "DELETE":
        return json_response(await delete_owned(gw, "response", rid, who, shown="response"))
    if tail == "input_items" and req.method == "GET":
        limit, order, after, before = page_query(req)
        items = ((await _stored(gw, who, rid)).extra or {}).get("input") or []
        return json_response(slice_page(items, limit, order, after, before))
    if tail == "cancel" and req.method == "POST":
        await _stored(gw, who, rid)
        raise BadRequest("Only background responses can be cancelled, and this gateway answers every response "
                         "in the foreground.", code="invalid_request")
    if tail in ("", "input_items", "cancel"):
        raise MethodNotAllowed(f"Method {req.method} is not allowed on {req.path}")
    raise NotFound(f"Unknown route {req.method} {req.path}", code="unknown_route")


ROUTES = [
    ("POST", "/v1/responses", create),
    *[(m, "/v1/responses/{rest}", one) for m in ("GET", "POST", "DELETE")],
]
