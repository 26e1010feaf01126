"""OpenAI's other routes (files, batches, images, moderations, completions, realtime client secrets),
forwarded as they are to the upstream that ``passthrough`` in the config names.

They run through the pipeline like every call (route ``passthrough``, the configured model), so keys,
limits and logging apply. The request body streams up and the response streams down as they arrive;
the upstream URL comes from the config, and only the path's own checked segments are appended to it.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

from relaygate.api.common import respond_stream
from relaygate.auth.authenticator import caller
from relaygate.core.call import Call, Route
from relaygate.core.errors import BadRequest, NotFound
from relaygate.server.http import Request, Response, StreamResponse
from relaygate.server.upload import ForwardedRequest, StreamedBody

if TYPE_CHECKING:
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
    server = gw.config.server
    limit = server.max_file_bytes if family in UPLOAD_FAMILIES else server.max_body_bytes
    headers = {k: req.headers[k] for k in FORWARDED_HEADERS if k in req.headers}
    fwd = ForwardedRequest(req.method, target, headers, StreamedBody(req.stream(limit)) if _has_body(req) else None)
    call = Call(id=req.id, route=Route.PASSTHROUGH, model=model, body={}, stream=True, headers=req.headers,
                client_ip=req.client_ip, forward=fwd, key=key, deadline=time.monotonic() + server.request_timeout)
    return respond_stream(call, await gw.handle(call))


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
