"""Helpers shared by the API modules: validation and turning a Reply into a response."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from relaygate.auth.authenticator import caller
from relaygate.core import shapes
from relaygate.core.call import Call, Reply, Route, Usage, delivered_of
from relaygate.core.errors import BadRequest, GatewayError
from relaygate.core.pricing import call_shape
from relaygate.providers.streaming import stream_error_event
from relaygate.server.http import Request, Response, StreamResponse

if TYPE_CHECKING:
    from relaygate.gateway import Gateway

log = logging.getLogger("relaygate")
NOT_CALLS = ("/health", "/admin", "/metrics", "/dashboard")  # paths whose refusals are no request log row


def require(body: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    """The field ``name`` of ``body``, which must exist and be of ``kind``."""
    if name not in body or body[name] is None:
        raise BadRequest(f"you must provide the '{name}' parameter", param=name, code="missing_required_parameter")
    return check(body, name, kind, what)


def check(body: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    """The optional field ``name`` (None if absent), which must be of ``kind`` when present."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise BadRequest(f"'{name}' must be {what}, not a boolean", param=name, code="invalid_type")
    if not isinstance(value, kind):
        raise BadRequest(f"'{name}' must be {what}, not {type(value).__name__}", param=name, code="invalid_type")
    return value


def check_int(body: dict[str, Any], name: str, lo: int, hi: int | None = None) -> int | None:
    """The optional integer field ``name`` (None if absent), which must lie in [lo, hi] (OpenAI's wording)."""
    value: int | None = check(body, name, int, "an integer")
    if value is not None:
        if value < lo:
            raise BadRequest(f"Invalid '{name}': integer below minimum value. Expected a value >= {lo}, but got "
                             f"{value} instead.", param=name, code="integer_below_min_value")
        if hi is not None and value > hi:
            raise BadRequest(f"Invalid '{name}': integer above maximum value. Expected a value <= {hi}, but got "
                             f"{value} instead.", param=name, code="integer_above_max_value")
    return value


def object_body(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise BadRequest(f"the request body must be a JSON object, not {type(data).__name__}")
    return data


def pop_provider(body: dict[str, Any]) -> str | None:
    """Take the gateway-only ``provider`` field out of the body (it is never forwarded)."""
    provider = body.pop("provider", None)
    if provider is not None and (not isinstance(provider, str) or not provider):
        raise BadRequest("'provider' must be a non-empty string", param="provider", code="invalid_type")
    return provider


async def body_call(gw: Gateway, req: Request, route: Route, validate: Callable[[dict[str, Any]], None],
                    shape: type, stream: bool = False) -> Call:
    """The call of a JSON request naming its ``model`` (embeddings, speech): the caller authenticated before the
    body is read, the gateway's ``provider`` field taken out, the body validated and checked as ``shape``."""
    key = await caller(gw.auth, req.headers)
    body = object_body(await req.json(gw.max_body_bytes))
    provider = pop_provider(body)
    validate(body)
    shapes.check(body, shape)  # the types of what translators read too (cheap: these bodies are small)
    return Call(id=req.id, route=route, model=body["model"], body=body, stream=stream, headers=req.headers,
                client_ip=req.client_ip, provider=provider, key=key,
                deadline=time.monotonic() + gw.request_timeout)


def bill_delivered(call: Call, reply: Reply) -> None:
    """A chat stream (OpenAI's, Responses', any dialect's, native or translated) is billed for what it
    delivered even when its usage never comes (the upstream broke, the client or a shutdown cut it, a server
    that ignores ``include_usage``): prompt tokens as the limits estimate them and the delivered output as
    ``Delivered`` counts the text the provider passed on, marked ``estimated`` (the log row says so).
    Registered after the pipeline's own callbacks, so it runs before them: the limits settle and the log
    records this usage."""
    if reply.stream is None:
        return
    delivered = delivered_of(reply)

    def estimate(r: Reply, error: BaseException | None) -> None:
        usage = r.usage
        if usage is None or not usage.known:
            out = delivered.completion_tokens()
            prompt, cap, n = call_shape(call)  # (a foreign client's own body's, untranslated)
            if type(cap) is int and cap > 0:  # the upstream was held to it: never count beyond
                out = min(out, cap * n)
            r.usage = Usage(prompt_tokens=prompt, completion_tokens=out, estimated=True)

    reply.on_done(estimate)


def reply_headers(call: Call, reply: Reply) -> dict[str, str]:
    """The response headers of a reply: its own dict (a reply is answered once), plus the gateway's."""
    h = reply.headers
    if call.deployment is not None:
        h["x-relaygate-deployment"] = call.deployment.name
    h["x-relaygate-attempts"] = str(call.attempts)
    return h


def respond(call: Call, reply: Reply) -> Response | StreamResponse:
    """The HTTP response for a reply: streamed as it arrives, or whole."""
    headers = reply_headers(call, reply)
    if reply.stream is not None:
        return StreamResponse(reply, headers, stream_error_event)
    return Response(reply.body or b"", reply.status, headers, reply.media_type, reply=reply)


class StreamCut(Exception):
    """Ends a non-SSE stream that failed mid-way by cutting the connection: the client sees a truncated
    body instead of an error event spliced into its audio or file."""


def cut_stream(err: GatewayError) -> bytes:
    raise StreamCut(err.message)


def respond_stream(call: Call, reply: Reply) -> Response | StreamResponse:
    """Like ``respond`` for bodies that are not always SSE (audio, files): a failure after the first byte
    ends SSE with an error event and cuts anything else."""
    if reply.stream is None or reply.media_type.startswith("text/event-stream"):
        return respond(call, reply)
    return StreamResponse(reply, reply_headers(call, reply), cut_stream)


def audit_refused(gw: Gateway | None, req: Request, error: GatewayError) -> None:
    """A request log row and a count in the metrics for a call that failed before the pipeline (which
    logs and counts every call it sees). Health checks, the admin API and /metrics are not calls;
    unknown routes are not either (no row for scanners); nor is the dashboard. The app calls it for the
    errors a route raises; a route that answers in its own dialect's error format calls it itself."""
    if gw is None or getattr(error, "audited", False) or req.path.startswith(NOT_CALLS):
        return
    try:
        if gw.metrics is not None:
            gw.metrics.record_refused(req.path, error, req.started)
        if gw.audit is not None:
            gw.audit.record_refused(req, error, gw.auth)
    except Exception:  # bookkeeping must never change the answer
        log.exception("request log: could not record the refused request %s", req.id)
