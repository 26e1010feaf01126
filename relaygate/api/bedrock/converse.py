"""Converse and ConverseStream: the request becomes an OpenAI chat call through the whole pipeline; the answer
comes back as Converse's JSON or as ConverseStream events (AWS event-stream framing) translated chunk by
chunk. The original request rides along (``Call.native``): a Bedrock deployment sends it as it is
(re-signed with its own credentials) and its answer is relayed untouched (``Reply.native``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from relaygate.api.bedrock.errors import bedrock_error
from relaygate.api.bedrock.translate import (
    EventWriter,
    exception_frame,
    to_converse_response,
    to_openai_request,
)
from relaygate.api.chat import chat_call
from relaygate.api.common import object_body
from relaygate.api.dialects import ForeignDialect, answer
from relaygate.core import jsonvalue
from relaygate.core.call import Call, Dialect, NativeRequest
from relaygate.core.errors import BadRequest
from relaygate.providers.aws.eventstream import EVENTSTREAM
from relaygate.server.http import Request, Response, StreamResponse

if TYPE_CHECKING:
    from relaygate.auth.keys import Principal
    from relaygate.gateway import Gateway


async def read_call(gw: Gateway, req: Request, key: Principal | None, model: str,
                    stream: bool) -> tuple[Call, list[str]]:
    """The chat call for the client's Converse request, and the fields the translation left out."""
    body = object_body(await req.json(gw.config.server.max_body_bytes))
    try:  # translated to a chat request (and maybe on to another dialect): room to nest it deeper
        jsonvalue.check(body, jsonvalue.ROOM)
    except jsonvalue.JSONRejected as e:
        raise BadRequest(f"the request is not accepted: {e.message}", param=e.param) from None
    request, dropped = to_openai_request(body, model, stream)
    call = chat_call(gw, req, request, key)
    call.native = NativeRequest(Dialect.BEDROCK, body)
    call.wants_usage = stream  # the usage chunk feeds the final metadata event
    return call, dropped


async def _converse(gw: Gateway, req: Request, key: Principal | None, model: str,
                    stream: bool) -> Response | StreamResponse:
    started = time.monotonic()
    call, dropped = await read_call(gw, req, key, model, stream)
    reply = await gw.handle(call)
    dialect = ForeignDialect(lambda c: EventWriter(started),
                             lambda data, usage, _model: to_converse_response(data, usage, started),
                             lambda e: bedrock_error(e, req.id), exception_frame)
    out = answer(dialect, call, reply, reply.native, dropped, {"x-amzn-requestid": req.id})
    if isinstance(out, StreamResponse):
        reply.media_type = EVENTSTREAM
    return out


async def converse(gw: Gateway, req: Request, key: Principal | None, model: str) -> Response | StreamResponse:
    return await _converse(gw, req, key, model, stream=False)


async def converse_stream(gw: Gateway, req: Request, key: Principal | None, model: str) -> Response | StreamResponse:
    return await _converse(gw, req, key, model, stream=True)
