"""OpenAI's other routes (files, batches, images, moderations, completions, realtime client secrets),
forwarded as they are to the upstream that ``passthrough`` in the config names.

They run through the pipeline like every call (route ``passthrough``, the configured model), so keys,
limits and logging apply, and each is priced as ``passthrough_cost`` says (a request that cannot be priced
is refused to a caller with a budget unless ``passthrough.allow_unpriced_with_budget``). The request body
streams up (but the small JSON bodies read to price them) and the response streams down as they arrive;
the upstream URL comes from the config, and only the path's own checked segments are appended to it.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from relaygate.api.common import respond_stream
from relaygate.api.passthrough_cost import Metered, meter_request
from relaygate.auth.authenticator import caller
from relaygate.core.aiter import aclose
from relaygate.core.call import Call, Reply, Route
from relaygate.core.errors import BadRequest, NotFound, PermissionDenied
from relaygate.providers.openai.usage import usage_of
from relaygate.providers.openai_format import take_usage, usage_at
from relaygate.providers.streaming import EventCutter
from relaygate.server.http import Request, Response, StreamResponse
from relaygate.server.upload import ForwardedRequest, ReadBody, StreamedBody

if TYPE_CHECKING:
    from relaygate.auth.principal import Principal
    from relaygate.gateway import Gateway

_SEGMENT = re.compile(r"[A-Za-z0-9_\-:.]{1,200}")
FORWARDED_HEADERS = ("content-type", "accept", "openai-beta")
UPLOAD_FAMILIES = ("files", "images")  # bodies that may be large files: server.max_file_bytes applies


def upstream_target(req: Request) -> tuple[str, str]:
    """(route family, path below /v1 with the query) after checking every path segment."""
    segments = req.path.split("/")[2:]  # "", "v1", ...
    if segments and segments[-1] == "":
        segments.pop()
    for s in segments:
        if not _SEGMENT.fullmatch(s) or s in (".", ".."):
            raise BadRequest(f"invalid path segment {s[:40]!r}", code="invalid_path")
    target = "/" + "/".join(segments)
    if req.query:
        target += "?" + req.query
    return segments[0], target


def _has_body(req: Request) -> bool:
    length = req.headers.get("content-length")
    return "transfer-encoding" in req.headers or (length is not None and length not in ("", "0"))


async def passthrough(gw: Gateway, req: Request) -> Response | StreamResponse:
    key = await caller(gw.auth, req.headers)
    family, target = upstream_target(req)
    model = gw.config.passthrough.model_for(family)
    if model is None:
        raise NotFound(f"{req.method} {req.path} is not served by this gateway: no passthrough upstream is "
                       "configured for it (passthrough.model in the config)", code="unknown_route")
    metered = await meter_request(req, family, target, gw.pricing.book, gw.config.server.max_body_bytes)
    call, reply = await forward(gw, req, key, model, family, target, metered)
    if metered.meter.per_token is not None and reply.stream is not None:  # priced by the answer's usage
        reply.stream = usage_read(reply.stream, reply, metered.hide_usage)
    return respond_stream(call, reply)


async def forward(gw: Gateway, req: Request, key: Principal | None, model: str, family: str, target: str,
                  metered: Metered) -> tuple[Call, Reply]:
    """Send the request to ``target`` (below /v1) on ``model``'s upstream through the pipeline, priced by
    ``metered`` (a request that cannot be priced is refused to a caller with a budget, unless allowed)."""
    server = gw.config.server
    if not metered.meter.priced and key is not None and key.wants_cost \
            and not gw.config.passthrough.allow_unpriced_with_budget:
        raise PermissionDenied(f"{req.method} {req.path} cannot be priced by this gateway, and this key (or its "
                               "team or user) has a budget it would escape; ask the operator "
                               "(passthrough.allow_unpriced_with_budget)", code="unpriced_request")
    limit = server.max_file_bytes if family in UPLOAD_FAMILIES else server.max_body_bytes
    headers = {k: req.headers[k] for k in FORWARDED_HEADERS if k in req.headers}
    body: StreamedBody | ReadBody | None = metered.body
    if body is None and _has_body(req):
        chunks = req.stream(limit)
        body = StreamedBody(metered.form.tap(chunks) if metered.form is not None else chunks)
    fwd = ForwardedRequest(req.method, target, headers, body)
    call = Call(id=req.id, route=Route.PASSTHROUGH, model=model, body=metered.parsed or {}, stream=True,
                headers=req.headers, client_ip=req.client_ip, forward=fwd, meter=metered.meter, key=key,
                deadline=time.monotonic() + server.request_timeout)
    return call, await gw.handle(call)


MAX_KEPT = 16 * 1024 * 1024  # a whole answer kept to read its usage; a longer one is charged its reservation


async def usage_read(stream: AsyncIterator[bytes], reply: Reply, hide_usage: bool) -> AsyncIterator[bytes]:
    """Pass an answer through, reading its usage onto ``reply``: from the usage chunk of an SSE stream
    (dropped when only the meter asked for it), or from the whole JSON body at its end."""
    cutter = EventCutter() if reply.media_type.startswith("text/event-stream") else None
    kept: list[bytes] = []
    size = 0
    try:
        async for chunk in stream:
            if cutter is None:
                if size <= MAX_KEPT:
                    kept.append(chunk)
                    size += len(chunk)
                yield chunk
                continue
            events = cutter.feed(chunk)  # whole events, whatever the upstream's line endings
            if usage_at(events, 0) >= 0:
                events = take_usage(events, reply, not hide_usage)
            if events:
                yield events
        if cutter is not None:
            events = cutter.end()
            if usage_at(events, 0) >= 0:
                events = take_usage(events, reply, not hide_usage)
            if events:
                yield events
        elif size <= MAX_KEPT:
            reply.usage = usage_of(b"".join(kept)) or reply.usage
    finally:
        await aclose(stream)


ROUTES = [
    *[(m, "/v1/files", passthrough) for m in ("GET", "POST")],
    *[(m, "/v1/files/{rest}", passthrough) for m in ("GET", "DELETE")],
    *[(m, "/v1/batches", passthrough) for m in ("GET", "POST")],
    *[(m, "/v1/batches/{rest}", passthrough) for m in ("GET", "POST")],
    ("POST", "/v1/images/{rest}", passthrough),
    ("POST", "/v1/moderations", passthrough),
    ("POST", "/v1/completions", passthrough),
    ("POST", "/v1/realtime/client_secrets", passthrough),
    ("POST", "/v1/realtime/sessions", passthrough),
    ("POST", "/v1/realtime/transcription_sessions", passthrough),
]
