"""OpenTelemetry traces over OTLP/HTTP (protobuf), built only when ``tracing.endpoint`` is set.

One SERVER span per call (continuing the client's ``traceparent`` when it sent one), a CLIENT span per
upstream attempt beneath it (deployment, outcome, why it was a retry or a fallback), an INTERNAL span for the
limits when the caller's key has any. Attribute names follow OpenTelemetry's GenAI semantic conventions
(``gen_ai.operation.name``, ``gen_ai.request.model``, ``gen_ai.usage.input_tokens``, …); the rest are
``relaygate.*``. A span here is a plain record queued when it ends; ``otlp.py``'s thread encodes and sends
them in batches (the SDK's spans cost most of a request). Each gateway has its own queue and exporter, so a
reload's new gateway exports through its own and the old one flushes when it closes. No key, header or body
goes into a span; text that came from outside (the request id, the model asked for, error messages) is
redacted like the log's.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from relaygate.core.call import Call, Handler, Reply, Route
from relaygate.core.errors import GatewayError
from relaygate.observability.otlp import CLIENT, INTERNAL, SERVER, OtlpExporter, SpanQueue, SpanRecord
from relaygate.requestlog.redact import Redactor
from relaygate.server.http import error_fields

if TYPE_CHECKING:
    from relaygate.config.observability import TracingConfig
    from relaygate.routing.deployment import Deployment

TRACE_HEADER = "x-relaygate-trace-id"  # the call's trace id (32 hex digits), on every answer of a traced call
MAX_TEXT = 200
# gen_ai.operation.name of each route (the GenAI conventions' names where they have one)
OPERATIONS = {Route.CHAT: "chat", Route.EMBEDDINGS: "embeddings", Route.TRANSCRIPTIONS: "transcriptions",
              Route.TRANSLATIONS: "translations", Route.SPEECH: "speech", Route.COUNT_TOKENS: "count_tokens",
              Route.PASSTHROUGH: "passthrough", Route.RESPONSES: "chat"}
REQUEST_PARAMS = (("max_tokens", "gen_ai.request.max_tokens"), ("max_completion_tokens", "gen_ai.request.max_tokens"),
                  ("temperature", "gen_ai.request.temperature"), ("top_p", "gen_ai.request.top_p"))
LOW_64 = (1 << 64) - 1
# W3C Trace Context: version-traceid-parentid-flags (lowercase hex); a later version may add fields after
TRACEPARENT = re.compile(r"(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-(?P<span>[0-9a-f]{16})"
                         r"-(?P<flags>[0-9a-f]{2})(?P<rest>-.*)?")
TRACESTATE = re.compile(r"[a-z0-9_\-*/@=,;.: \t]*", re.I)  # the characters of list members and separators
REQUEST_ID = re.compile(r"req_[0-9a-f]{24}")  # ours: nothing to redact


class Tracing:
    """This gateway's span queue, exporter thread, sampler and trace-context parser."""

    def __init__(self, config: TracingConfig, redact: Redactor, known: frozenset[str] = frozenset()) -> None:
        assert config.endpoint is not None
        self.queue = SpanQueue(config.queue_size)
        self.exporter = OtlpExporter(self.queue, config.endpoint,
                                     {k: v.get_secret_value() for k, v in config.headers.items()},
                                     config.timeout, config.batch_delay, {"service.name": config.service_name,
                                                                         "telemetry.sdk.name": "relaygate",
                                                                         "telemetry.sdk.language": "python"})
        # TraceIdRatioBased's rule (the SDK's, and other languages'): a new trace is kept when the low 64 bits
        # of its id are below ratio * 2^64, so every service sampling at one ratio keeps the same traces
        self.ratio_bound = round(config.sample_ratio * (1 << 64))
        self.ids = random.Random()  # span and trace ids; seeded from the OS
        self.redact = redact
        self.known = known  # names from the config (models, upstream models): nothing to redact in them

    def text(self, value: str) -> str:
        """Text from outside, redacted like the log's; a configured name or one of our request ids as it is
        (redaction runs a dozen patterns: most of a span's cost, were it run on every value)."""
        if value in self.known or REQUEST_ID.fullmatch(value):
            return value
        return self.redact(value[:2 * MAX_TEXT])[:MAX_TEXT]

    @staticmethod
    def parent(headers: dict[str, str]) -> tuple[int, int, bool, str] | None:
        """The client's ``traceparent`` (W3C Trace Context): trace id, parent span id, sampled, its
        ``tracestate``; None when malformed (then the call starts a new trace, as the spec says)."""
        m = TRACEPARENT.fullmatch(headers.get("traceparent", "").strip())
        if m is None or m["version"] == "ff" or (m["version"] == "00" and m["rest"]):
            return None
        trace_id, span_id = int(m["trace"], 16), int(m["span"], 16)
        if not trace_id or not span_id:
            return None
        state = headers.get("tracestate", "")
        if len(state) > 512 or not TRACESTATE.fullmatch(state):
            state = ""  # a malformed tracestate is dropped, the trace still continued
        return trace_id, span_id, bool(int(m["flags"], 16) & 1), state

    def flush(self) -> bool:
        """Send what is queued now (blocking)."""
        return self.exporter.flush()

    def close(self) -> None:
        """Export what is pending, then stop (blocking: run it off the event loop)."""
        self.exporter.close()


class CallTrace:
    """One call's request span, and the spans beneath it (``Call.trace``)."""

    __slots__ = ("tracing", "span", "last_error")

    def __init__(self, tracing: Tracing, span: SpanRecord) -> None:
        self.tracing = tracing
        self.span = span
        self.last_error: str | None = None  # the error class of the last failed attempt (why the next one)

    def attempt(self, dep: Deployment, call: Call) -> Callable[[Reply | None, BaseException | None], None]:
        """Start the span of an upstream attempt; the function returned ends it with the attempt's outcome."""
        span = self._attempt_span(dep, call)
        return lambda reply, error: self._end_attempt(span, reply, error)

    def _attempt_span(self, dep: Deployment, call: Call) -> SpanRecord:
        model = dep.upstream_model(call.model)
        op = OPERATIONS[call.route]
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": op, "gen_ai.provider.name": dep.provider_type,
            "gen_ai.request.model": self.tracing.text(model), "relaygate.deployment": dep.name,
            "relaygate.model": dep.model_name, "relaygate.attempt": call.attempts,
        }
        if self.last_error is not None:
            attrs["relaygate.retry_reason"] = self.last_error
        if call.fallbacks:
            attrs["relaygate.fallback"] = True
        return self._child(f"{op} {model}"[:MAX_TEXT], CLIENT, attrs)

    def _child(self, name: str, kind: int, attrs: dict[str, Any]) -> SpanRecord:
        parent = self.span
        return SpanRecord(parent.sink, parent.trace_id, parent.span_id, name, kind, attrs,
                          self.tracing.ids.getrandbits(64) or 1, parent.trace_state)

    def _end_attempt(self, span: SpanRecord, reply: Reply | None, error: BaseException | None) -> None:
        if error is None:
            if reply is not None:
                span.attrs["http.response.status_code"] = reply.status
                _usage(span.attrs, reply)
        else:
            status, kind, _ = error_fields(error)
            if isinstance(error, GatewayError):
                self.last_error = error.kind
            _failed(span, status, kind)
        span.end()

    def step(self, name: str) -> SpanRecord:
        """An INTERNAL span beneath the request's (limits, cache, condensation)."""
        return self._child(name, INTERNAL, {})


def _usage(attrs: dict[str, Any], reply: Reply) -> None:
    usage = reply.usage
    if usage is not None and usage.known:
        attrs["gen_ai.usage.input_tokens"] = usage.prompt_tokens
        attrs["gen_ai.usage.output_tokens"] = usage.completion_tokens


def _failed(span: SpanRecord, status: int | None, kind: str | None) -> None:
    span.attrs["error.type"] = kind or "internal"
    if status is not None:
        span.attrs["http.response.status_code"] = status
    span.error = True


class TraceLayer:
    """The outermost layer when tracing is on: the request span, its trace id on the answer."""

    def __init__(self, next_handler: Handler, tracing: Tracing, cost: Any) -> None:
        self.next = next_handler
        self.tracing = tracing
        self.cost = cost

    async def __call__(self, call: Call) -> Reply:
        tracing = self.tracing
        parent = tracing.parent(call.headers) if "traceparent" in call.headers else None
        if parent is None:
            trace_id = tracing.ids.getrandbits(128) or 1
            sampled = (trace_id & LOW_64) < tracing.ratio_bound
        else:  # a continued trace follows its parent's decision
            trace_id, _, sampled, _ = parent
        trace_header = format(trace_id, "032x")
        if not sampled:  # the trace id still goes back, nothing else is done
            try:
                reply = await self.next(call)
            except GatewayError as e:
                e.headers[TRACE_HEADER] = trace_header
                raise
            reply.headers[TRACE_HEADER] = trace_header
            return reply
        op = OPERATIONS[call.route]
        model = tracing.text(call.model)
        attrs: dict[str, Any] = {"gen_ai.operation.name": op, "gen_ai.request.model": model,
                                 "relaygate.request_id": tracing.text(call.id), "relaygate.stream": call.stream}
        body = call.body if call.translated else {}  # (not made for tracing: the fast path stays fast)
        for name, attr in REQUEST_PARAMS:
            v = body.get(name)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                attrs[attr] = v
        span_id = tracing.ids.getrandbits(64) or 1
        if parent is None:
            span = SpanRecord(tracing.queue, trace_id, 0, f"{op} {model}"[:MAX_TEXT], SERVER, attrs, span_id)
        else:
            span = SpanRecord(tracing.queue, trace_id, parent[1], f"{op} {model}"[:MAX_TEXT], SERVER, attrs,
                              span_id, parent[3], remote_parent=True)
        call.trace = CallTrace(tracing, span)  # attempts and limits get spans only in a recorded trace
        try:
            reply = await self.next(call)
        except BaseException as e:
            if isinstance(e, GatewayError):
                e.headers[TRACE_HEADER] = trace_header
            self.finish(call, span, None, e)
            raise
        reply.headers[TRACE_HEADER] = trace_header
        reply.on_done(lambda r, err: self.finish(call, span, r, err))
        return reply

    def finish(self, call: Call, span: SpanRecord, reply: Reply | None, error: BaseException | None) -> None:
        attrs = span.attrs
        attrs["relaygate.attempts"] = call.attempts
        dep = call.deployment
        if dep is not None:
            attrs["relaygate.deployment"] = dep.name
            attrs["relaygate.model"] = dep.model_name
            attrs["gen_ai.provider.name"] = dep.provider_type
        if call.fallbacks:
            attrs["relaygate.fallbacks"] = list(call.fallbacks)
        if call.cache_hit:
            attrs["relaygate.cache_hit"] = True
        if call.faults:
            attrs["relaygate.faults"] = list(call.faults)
        if error is None:
            if reply is not None:
                attrs["http.response.status_code"] = reply.status
                _usage(attrs, reply)
            attrs["relaygate.cost_usd"] = self.cost(call, reply) / 1e9
        else:
            status, kind, _ = error_fields(error)
            if status is not None and status >= 500:
                _failed(span, status, kind)
            else:  # a 4xx is the client's: recorded, not an error of the server span
                attrs["http.response.status_code"] = status or 0
                attrs["error.type"] = kind or "internal"
        span.end()
