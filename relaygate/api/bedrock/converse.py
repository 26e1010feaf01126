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
from relaygate.api.chat import native_call
from relaygate.api.common import object_body, reply_headers
from relaygate.api.dialects import ForeignDialect, answer
from relaygate.core import jsonvalue
from relaygate.core.call import Dialect, NativeRequest
from relaygate.providers.aws.eventstream import EVENTSTREAM
from relaygate.server.http import Request, Response, StreamResponse

if TYPE_CHECKING:
    from relaygate.auth.principal import Principal
    from relaygate.gateway import Gateway


async def converse(gw: Gateway, req: Request, key: Principal | None, model: str,
                   stream: bool) -> Response | StreamResponse:
    """Converse (``stream`` False) or ConverseStream: the client's body rides along its call, the chat body
    made when asked for (the fields the translation left out then in ``native.dropped``)."""
    started = time.monotonic()
    data, dumped = await req.json(gw.config.server.max_body_bytes, jsonvalue.loads_dumped)
    body = object_body(data)
    # what goes upstream is what the gateway read (``dumped``), the client's hash kept when they are its bytes
    sha256 = req.body_sha256 if dumped == req.raw else None
    # (dialect, body, dropped, raw, sha256) given in order: a dataclass's keywords cost ~1.5k instructions here
    native = NativeRequest(Dialect.BEDROCK, body, [], dumped, sha256)
    call = native_call(gw, req, native, lambda: to_openai_request(body, model, stream), model, stream, key)
    reply = await gw.handle(call)
    if reply.native and reply.stream is None:  # relayed as it came: the dialect's writers are not needed
        headers = reply_headers(call, reply)
        headers["x-amzn-requestid"] = req.id
        return Response(reply.body or b"", 200, headers, reply=reply)
    dialect = ForeignDialect(lambda c: EventWriter(started),
                             lambda data, usage, _model: to_converse_response(data, usage, started),
                             lambda e: bedrock_error(e, req.id), exception_frame)
    out = answer(dialect, call, reply, reply.native, native.dropped, {"x-amzn-requestid": req.id})
    if isinstance(out, StreamResponse):
        reply.media_type = EVENTSTREAM
    return out
