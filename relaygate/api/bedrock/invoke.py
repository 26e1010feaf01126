"""InvokeModel and InvokeModelWithResponseStream for Anthropic-on-Bedrock bodies (``anthropic_version:
bedrock-2023-05-31``, the Messages shape without ``model``): served as ``/v1/messages`` serves a Messages
request (an Anthropic deployment, or Claude on Bedrock, relays it as it is), the answer an Anthropic Message;
streamed, each Messages event is one event-stream ``chunk`` carrying ``{"bytes": base64(event JSON)}``, as
Bedrock sends them. Other model families' bodies (api/bedrock/families.py) are translated to chat calls."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson

from relaygate.api.anthropic.messages import messages_call, messages_dialect
from relaygate.api.bedrock.errors import bedrock_error
from relaygate.api.bedrock.families import Family, family_of, metrics
from relaygate.api.bedrock.translate import exception_frame
from relaygate.api.chat import chat_call
from relaygate.api.common import object_body
from relaygate.api.dialects import ForeignDialect, answer
from relaygate.core import jsonvalue
from relaygate.core.aiter import aclose
from relaygate.core.errors import BadRequest
from relaygate.providers.aws import eventstream as es
from relaygate.providers.aws.bedrock_format import ANTHROPIC_VERSION
from relaygate.providers.aws.eventstream import EVENTSTREAM
from relaygate.providers.streaming import SSEDecoder
from relaygate.server.http import Request, Response, StreamResponse

if TYPE_CHECKING:
    from relaygate.auth.principal import Principal
    from relaygate.core.call import Reply
    from relaygate.gateway import Gateway



async def _answer(gw: Gateway, req: Request, key: Principal | None, model: str,
                  stream: bool) -> Response | StreamResponse:
    body = object_body(await req.json(gw.config.server.max_body_bytes))
    if "anthropic_version" not in body:
        family = family_of(body, model)
        if family is not None:
            return await _family(gw, req, key, model, stream, body, family)
    version = body.pop("anthropic_version", None)
    if version != ANTHROPIC_VERSION:
        raise BadRequest(f"anthropic_version: this gateway serves InvokeModel for Anthropic bodies (it must be "
                         f"{ANTHROPIC_VERSION!r}) and Amazon Nova, Meta Llama, Mistral (text and chat), AI21 Jamba, "
                         "Amazon Titan Text and Cohere Command R bodies; this body is none of them", param="anthropic_version")
    beta = body.pop("anthropic_beta", None)  # Bedrock's anthropic-beta header, as a body field
    if beta is not None and (not isinstance(beta, list) or not all(isinstance(b, str) for b in beta)):
        raise BadRequest("anthropic_beta must be a list of strings", param="anthropic_beta")
    if "model" in body or "stream" in body:
        raise BadRequest("model and stream are not fields of an InvokeModel body (the URL says them)",
                         param="model" if "model" in body else "stream")
    body["model"] = model
    if stream:
        body["stream"] = True
    call, dropped = await messages_call(gw, req, body, key)
    if beta:  # as the header it stands for: Anthropic and Claude on Bedrock take it; a translation drops it
        call.headers = {**call.headers, "anthropic-beta": ",".join(beta)}
        dropped.append("anthropic_beta")
    call.wants_usage = stream
    reply = await gw.handle(call)
    out = answer(messages_dialect(lambda err: bedrock_error(err, req.id)), call, reply, reply.anthropic_native,
                 dropped, {"x-amzn-requestid": req.id})
    if isinstance(out, Response):
        _token_headers(out, reply)
        return out
    assert reply.stream is not None
    reply.stream = _chunks(reply.stream, reply, call.started)
    reply.media_type = EVENTSTREAM
    return StreamResponse(reply, out.headers, exception_frame)


async def _family(gw: Gateway, req: Request, key: Principal | None, model: str, stream: bool,
                  body: dict[str, Any], family: Family) -> Response | StreamResponse:
    """A body of another family: translated to a chat call, the answer back in the family's own shape."""
    jsonvalue.room_to_translate(body)
    request, dropped = family.request(body, model, stream)
    call = chat_call(gw, req, request, key)
    call.wants_usage = stream  # the usage feeds the last chunk (and Bedrock's invocation metrics)
    reply = await gw.handle(call)
    started = call.started
    dialect = ForeignDialect(lambda _: family.writer(started), lambda data, usage, _: family.whole(data, usage),
                             lambda e: bedrock_error(e, req.id), exception_frame)
    out = answer(dialect, call, reply, False, dropped, {"x-amzn-requestid": req.id})
    if isinstance(out, StreamResponse):
        reply.media_type = EVENTSTREAM
    else:
        _token_headers(out, reply)
    return out


def _token_headers(out: Response, reply: Reply) -> None:
    """A whole answer's token counts in Bedrock's headers (when the call succeeded and its usage is known)."""
    if out.status == 200 and reply.usage is not None and reply.usage.known:
        out.headers["x-amzn-bedrock-input-token-count"] = str(reply.usage.prompt_tokens)
        out.headers["x-amzn-bedrock-output-token-count"] = str(reply.usage.completion_tokens)


async def invoke(gw: Gateway, req: Request, key: Principal | None, model: str) -> Response | StreamResponse:
    return await _answer(gw, req, key, model, stream=False)


async def invoke_stream(gw: Gateway, req: Request, key: Principal | None, model: str) -> Response | StreamResponse:
    return await _answer(gw, req, key, model, stream=True)


async def _chunks(sse: AsyncIterator[bytes], reply: Reply, started: float) -> AsyncIterator[bytes]:
    """Messages SSE events as event-stream ``chunk`` events; ``message_stop`` carries Bedrock's invocation
    metrics (the usage the reply holds by then)."""
    decoder = SSEDecoder()
    try:
        async for piece in sse:
            out = []
            for event, data in decoder.feed(piece):
                if event == "ping":
                    continue
                if event == "message_stop":
                    data = _with_metrics(data, reply, started)
                out.append(es.event("chunk", orjson.dumps({"bytes": base64.b64encode(data).decode()})))
            if out:
                yield b"".join(out)
    finally:
        await aclose(sse)


def _with_metrics(data: bytes, reply: Reply, started: float) -> bytes:
    try:
        stop: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data
    if not isinstance(stop, dict):
        return data
    stop["amazon-bedrock-invocationMetrics"] = metrics(reply.usage, started, reply.first_byte_at or started)
    return orjson.dumps(stop)
