"""OpenTelemetry traces over OTLP/HTTP, built only when ``tracing.endpoint`` is set (the SDK is imported then,
from the ``otel`` extra).

One SERVER span per call (continuing the client's ``traceparent`` when it sent one), a CLIENT span per
upstream attempt beneath it (deployment, outcome, why it was a retry or a fallback), an INTERNAL span for the
limits when the caller's key has any. Attribute names follow OpenTelemetry's GenAI semantic conventions
(``gen_ai.operation.name``, ``gen_ai.request.model``, ``gen_ai.usage.input_tokens``, …); the rest are
``relaygate.*``. The provider is this gateway's own (never the process-global one), so a reload's new gateway
exports through its own and the old one flushes when it closes. No key, header or body goes into a span; text
that came from outside (the request id, the model asked for, error messages) is redacted like the log's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from relaygate.config import ConfigError
from relaygate.core.call import Call, Handler, Reply, Route
from relaygate.core.errors import GatewayError
from relaygate.requestlog.redact import Redactor
from relaygate.server.http import error_fields

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

    from relaygate.config.observability import TracingConfig
    from relaygate.routing.deployment import Deployment

TRACE_HEADER = "x-relaygate-trace-id"  # the call's trace id (32 hex digits), on every answer of a traced call
MAX_TEXT = 200
# gen_ai.operation.name of each route (the GenAI conventions' names where they have one)
OPERATIONS = {Route.CHAT: "chat", Route.EMBEDDINGS: "embeddings", Route.TRANSCRIPTIONS: "transcriptions",
              Route.TRANSLATIONS: "translations", Route.SPEECH: "speech", Route.COUNT_TOKENS: "count_tokens",
              Route.PASSTHROUGH: "passthrough"}
REQUEST_PARAMS = (("max_tokens", "gen_ai.request.max_tokens"), ("max_completion_tokens", "gen_ai.request.max_tokens"),
                  ("temperature", "gen_ai.request.temperature"), ("top_p", "gen_ai.request.top_p"))


class Tracing:
    """This gateway's tracer provider, exporter and propagator."""

    def __init__(self, config: TracingConfig, redact: Redactor, known: frozenset[str] = frozenset()) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError:
            raise ConfigError(["tracing.endpoint: tracing needs the otel extra: pip install 'relaygate[otel]'"]) \
                from None
        assert config.endpoint is not None
        self.provider = TracerProvider(resource=Resource.create({"service.name": config.service_name}),
                                       sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
                                       shutdown_on_exit=False)
        exporter = OTLPSpanExporter(endpoint=config.endpoint, timeout=config.timeout,
                                    headers={k: v.get_secret_value() for k, v in config.headers.items()})
        self.provider.add_span_processor(BatchSpanProcessor(
            exporter, max_queue_size=config.queue_size, schedule_delay_millis=config.batch_delay * 1000))
        self.tracer: Tracer = self.provider.get_tracer("relaygate")
        self.propagator = TraceContextTextMapPropagator()
        self.redact = redact
        self.known = known  # names from the config (models, upstream models): nothing to redact in them

    def text(self, value: str) -> str:
        """Text from outside, redacted like the log's; a configured name or one of our request ids as it is
        (redaction runs a dozen patterns: most of a span's cost, were it run on every value)."""
        if value in self.known or (len(value) == 28 and value.startswith("req_")
                                   and all(c in "0123456789abcdef" for c in value[4:])):
            return value
        return self.redact(value[:2 * MAX_TEXT])[:MAX_TEXT]

    def flush(self, timeout: float = 10.0) -> bool:
        return self.provider.force_flush(int(timeout * 1000))

    def close(self) -> None:
        """Export what is pending, then stop (blocking: run it off the event loop)."""
        self.provider.shutdown()


class CallTrace:
    """One call's request span, and the spans beneath it (``Call.trace``)."""

    __slots__ = ("tracing", "span", "context", "last_error")

    def __init__(self, tracing: Tracing, span: Span) -> None:
        from opentelemetry.trace import set_span_in_context

        self.tracing = tracing
        self.span = span
        self.context = set_span_in_context(span)
        self.last_error: str | None = None  # the error class of the last failed attempt (why the next one)

    def attempt(self, dep: Deployment, call: Call) -> Callable[[Reply | None, BaseException | None], None]:
        """Start the span of an upstream attempt; the function returned ends it with the attempt's outcome."""
        span = self._attempt_span(dep, call)
        return lambda reply, error: self._end_attempt(span, reply, error)

    def _attempt_span(self, dep: Deployment, call: Call) -> Span:
        from opentelemetry.trace import SpanKind

        model = dep.upstream_model(call.model)
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": OPERATIONS[call.route], "gen_ai.provider.name": dep.provider_type,
            "gen_ai.request.model": self.tracing.text(model), "relaygate.deployment": dep.name,
            "relaygate.model": dep.model_name, "relaygate.attempt": call.attempts,
        }
        if self.last_error is not None:
            attrs["relaygate.retry_reason"] = self.last_error
        if call.fallbacks:
            attrs["relaygate.fallback"] = True
        return self.tracing.tracer.start_span(f"{OPERATIONS[call.route]} {model}"[:MAX_TEXT], self.context,
                                              SpanKind.CLIENT, attrs)

    def _end_attempt(self, span: Span, reply: Reply | None, error: BaseException | None) -> None:
        if error is None:
            if reply is not None:
                span.set_attributes({"http.response.status_code": reply.status, **_usage(reply)})
        else:
            status, kind, _ = error_fields(error)
            if isinstance(error, GatewayError):
                self.last_error = error.kind
            _failed(span, status, kind)
        span.end()

    def step(self, name: str) -> Span:
        """An INTERNAL span beneath the request's (limits, cache, condensation)."""
        from opentelemetry.trace import SpanKind

        return self.tracing.tracer.start_span(name, self.context, SpanKind.INTERNAL)


def _usage(reply: Reply) -> dict[str, int]:
    usage = reply.usage
    if usage is not None and usage.known:
        return {"gen_ai.usage.input_tokens": usage.prompt_tokens, "gen_ai.usage.output_tokens": usage.completion_tokens}
    return {}


def _failed(span: Span, status: int | None, kind: str | None) -> None:
    from opentelemetry.trace import StatusCode

    attrs: dict[str, Any] = {"error.type": kind or "internal"}
    if status is not None:
        attrs["http.response.status_code"] = status
    span.set_attributes(attrs)
    span.set_status(StatusCode.ERROR)


class TraceLayer:
    """The outermost layer when tracing is on: the request span, its trace id on the answer."""

    def __init__(self, next_handler: Handler, tracing: Tracing, cost: Any) -> None:
        self.next = next_handler
        self.tracing = tracing
        self.cost = cost

    async def __call__(self, call: Call) -> Reply:
        from opentelemetry.trace import SpanKind

        tracing = self.tracing
        parent = tracing.propagator.extract(call.headers) if "traceparent" in call.headers else None
        op = OPERATIONS[call.route]
        span = tracing.tracer.start_span(op, parent, SpanKind.SERVER)
        trace_id = format(span.get_span_context().trace_id, "032x")
        if not span.is_recording():  # sampled out: the trace id still goes back, nothing else is done
            try:
                reply = await self.next(call)
            except GatewayError as e:
                e.headers[TRACE_HEADER] = trace_id
                raise
            reply.headers[TRACE_HEADER] = trace_id
            return reply
        model = tracing.text(call.model)
        span.update_name(f"{op} {model}"[:MAX_TEXT])
        attrs: dict[str, Any] = {"gen_ai.operation.name": op, "gen_ai.request.model": model,
                                 "relaygate.request_id": tracing.text(call.id), "relaygate.stream": call.stream}
        body = call.body
        for name, attr in REQUEST_PARAMS:
            v = body.get(name)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                attrs[attr] = v
        span.set_attributes(attrs)
        call.trace = CallTrace(tracing, span)  # attempts and limits get spans only in a recorded trace
        try:
            reply = await self.next(call)
        except BaseException as e:
            if isinstance(e, GatewayError):
                e.headers[TRACE_HEADER] = trace_id
            self.finish(call, span, None, e)
            raise
        reply.headers[TRACE_HEADER] = trace_id
        reply.on_done(lambda r, err: self.finish(call, span, r, err))
        return reply

    def finish(self, call: Call, span: Span, reply: Reply | None, error: BaseException | None) -> None:
        attrs: dict[str, Any] = {"relaygate.attempts": call.attempts}
        dep = call.deployment
        if dep is not None:
            attrs.update({"relaygate.deployment": dep.name, "relaygate.model": dep.model_name,
                          "gen_ai.provider.name": dep.provider_type})
        if call.fallbacks:
            attrs["relaygate.fallbacks"] = list(call.fallbacks)
        if call.cache_hit:
            attrs["relaygate.cache_hit"] = True
        if call.faults:
            attrs["relaygate.faults"] = list(call.faults)
        if error is None:
            if reply is not None:
                attrs["http.response.status_code"] = reply.status
                attrs.update(_usage(reply))
            attrs["relaygate.cost_usd"] = self.cost(call, reply) / 1e9
            span.set_attributes(attrs)
        else:
            span.set_attributes(attrs)
            status, kind, _ = error_fields(error)
            if status is not None and status >= 500:
                _failed(span, status, kind)
            else:  # a 4xx is the client's: recorded, not an error of the server span
                span.set_attributes({"http.response.status_code": status or 0, "error.type": kind or "internal"})
        span.end()
