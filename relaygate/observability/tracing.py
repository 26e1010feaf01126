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
from time import time_ns
from typing import TYPE_CHECKING, Any

from relaygate.core.call import Call, Reply, Route
from relaygate.core.errors import GatewayError
from relaygate.observability.otlp import CLIENT, INTERNAL, SERVER, OtlpExporter, SpanQueue, SpanRecord
from relaygate.observability.otlpwire import (
    KINDS,
    PARENT_ID,
    SPAN_ID,
    TAILS,
    TRACE_ID,
    double_prefix,
    field,
    pack_double,
    pack_times,
    string_prefix,
    text,
)
from relaygate.requestlog.redact import Redactor
from relaygate.server.http import error_fields

if TYPE_CHECKING:
    from relaygate.config.observability import TracingConfig
    from relaygate.core.call import Usage
    from relaygate.observability.otlpwire import SpanEncoder
    from relaygate.routing.deployment import Deployment

MAX_TEXT = 200
# gen_ai.operation.name of each route (the GenAI conventions' names where they have one)
OPERATIONS = {Route.CHAT: "chat", Route.EMBEDDINGS: "embeddings", Route.TRANSCRIPTIONS: "transcriptions",
              Route.TRANSLATIONS: "translations", Route.SPEECH: "speech", Route.COUNT_TOKENS: "count_tokens",
              Route.PASSTHROUGH: "passthrough", Route.RESPONSES: "chat"}
REQUEST_PARAMS = (("max_tokens", "gen_ai.request.max_tokens"), ("max_completion_tokens", "gen_ai.request.max_tokens"),
                  ("temperature", "gen_ai.request.temperature"), ("top_p", "gen_ai.request.top_p"))
NO_PARAMS = (None, None, None, None)
LOW_64 = (1 << 64) - 1
# W3C Trace Context: version-traceid-parentid-flags (lowercase hex); a later version may add fields after
TRACEPARENT = re.compile(r"(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-(?P<span>[0-9a-f]{16})"
                         r"-(?P<flags>[0-9a-f]{2})(?P<rest>-.*)?")
TRACESTATE = re.compile(r"[a-z0-9_\-*/@=,;.: \t]*", re.I)  # the characters of list members and separators
REQUEST_ID = re.compile(r"req_[0-9a-f]{24}")  # ours: nothing to redact
INPUT_TOKENS, OUTPUT_TOKENS = "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"
# the parts of a span message that never change, encoded once (observability/otlpwire.py)
_REQUEST_ID = string_prefix("relaygate.request_id", 28)  # our request ids' length
_COST = double_prefix("relaygate.cost_usd")
_SERVER, _CLIENT = KINDS[SERVER], KINDS[CLIENT]
_LOCAL_TAILS = TAILS[0][0], TAILS[1][0]  # by error


class Tracing:
    """This gateway's span queue, exporter thread, sampler and trace-context parser."""

    def __init__(self, config: TracingConfig, redact: Redactor, known: frozenset[str] = frozenset(),
                 cost: Callable[[Call, Reply | None], int] = lambda call, reply: 0) -> None:
        assert config.endpoint is not None
        self.cost = cost  # a finished call's cost in nano-dollars (computed once per call, shared)
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
        self.bits = self.ids.getrandbits
        self.redact = redact
        self.known = known  # names from the config (models, upstream models): nothing to redact in them

    def text(self, value: str) -> str:
        """Text from outside, redacted like the log's; a configured name or one of our request ids as it is
        (redaction runs a dozen patterns: most of a span's cost, were it run on every value). Called in the
        export thread (the patterns and names never change)."""
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

    def begin(self, call: Call) -> str:
        """The call's trace: continued from its ``traceparent`` or new, sampled or not; when sampled its request
        span (``call.trace``), which the observe layer ends. Answers the trace id for the answer's header."""
        parent = self.parent(call.headers) if "traceparent" in call.headers else None
        if parent is None:
            trace_id = self.bits(128) or 1
            sampled = (trace_id & LOW_64) < self.ratio_bound
        else:  # a continued trace follows its parent's decision
            trace_id = parent[0]
            sampled = parent[2]
        trace_bytes = trace_id.to_bytes(16, "big")
        if sampled:  # else the trace id still goes back, nothing else is done
            call.trace = CallTrace(self, call, trace_id, trace_bytes, parent)  # attempts, limits… get spans beneath
        return trace_bytes.hex()

    def flush(self) -> bool:
        """Send what is queued now (blocking)."""
        return self.exporter.flush()

    def close(self) -> None:
        """Export what is pending, then stop (blocking: run it off the event loop)."""
        self.exporter.close()


class CallTrace:
    """One call's trace and its SERVER span (``Call.trace``); the spans beneath it come from here.

    On the request path it keeps raw values only (ids as ints, the model and request id as they came, the
    reply's usage object, the deployment): its ``name`` and ``attrs`` are made, redacted and formatted when the
    export thread asks for them, once per span rather than once per call on the event loop."""

    __slots__ = ("tracing", "trace_id", "trace_bytes", "span_id", "parent_id", "trace_state", "remote_parent", "start",
                 "end_time", "error", "last_error", "call_id", "own_id", "model", "route", "stream", "params", "attempts",
                 "dep", "fallbacks", "cache_hit", "faults", "status", "usage", "cost", "error_type", "call")
    kind = SERVER

    def __init__(self, tracing: Tracing, call: Call, trace_id: int, trace_bytes: bytes,
                 parent: tuple[int, int, bool, str] | None) -> None:
        self.tracing = tracing
        self.trace_id = trace_id
        self.trace_bytes = trace_bytes  # the id's 16 bytes (its answer header's too): not made again per span
        self.span_id = tracing.bits(64) or 1
        if parent is None:
            self.parent_id = 0
            self.trace_state = ""
            self.remote_parent = False
        else:
            self.parent_id = parent[1]
            self.trace_state = parent[3]
            self.remote_parent = True
        self.error = False
        self.last_error: str | None = None  # the error class of the last failed attempt (why the next one)
        self.call: Call | None = call  # until it ends (then only what the span needs of it is kept)
        self.call_id = call.id
        self.own_id = "x-request-id" not in call.headers  # then ours (http.RequestIds): nothing to redact
        self.model = call.model
        self.route = call.route
        self.stream = call.stream
        if call.native is None or call.translated:  # (the chat body is not made for tracing: the same-dialect
            # fast path stays fast)
            get = call.body.get
            self.params = (get("max_tokens"), get("max_completion_tokens"), get("temperature"), get("top_p"))
        else:
            self.params = NO_PARAMS
        self.start = time_ns()

    def attempt(self, dep: Deployment, call: Call) -> AttemptSpan:
        """Start the span of an upstream attempt; calling it with the attempt's outcome ends it."""
        return AttemptSpan(self, dep, call)

    def step(self, name: str) -> SpanRecord:
        """An INTERNAL span beneath the request's (limits, cache, condensation)."""
        return SpanRecord(self.tracing.queue, self.trace_id, self.span_id, name, INTERNAL, {},
                          self.tracing.bits(64) or 1, self.trace_state)

    def done(self, reply: Reply | None, error: BaseException | None) -> None:
        """The call's end: what the span says of it, then the span to the export queue."""
        call = self.call
        if call is None:  # ended already
            return
        self.call = None
        self.attempts = call.attempts
        self.dep = call.deployment
        self.fallbacks = call.fallbacks
        self.cache_hit = call.cache_hit
        self.faults = call.faults
        if error is None:
            self.status = reply.status if reply is not None else None
            self.usage = reply.usage if reply is not None else None
            self.error_type = None
            self.cost = self.tracing.cost(call, reply)
        else:
            status, kind, _ = error_fields(error)
            self.status = status or 0
            self.usage = None
            self.error_type = kind or "internal"
            self.cost = 0
            self.error = status is not None and status >= 500  # a 4xx is the client's: not the server span's error
        self.end_time = time_ns()
        self.tracing.queue.put(self)

    # made in the export thread
    @property
    def name(self) -> str:
        return self._fixed()[0]

    @property
    def attrs(self) -> dict[str, Any]:
        return {**self._fixed()[1], **self._own()}

    def encoded(self, encoder: SpanEncoder) -> bytes:
        """Its ``Span`` message: the name and attributes most calls of a model share, encoded once for them all
        (``SpanEncoder.group``), between the call's own ids, times, request id, usage and cost."""
        params = self.params
        key = (self.model, self.dep, self.status, self.error_type, self.attempts, self.route, self.stream,
               self.fallbacks, self.cache_hit, self.faults,
               None if params == NO_PARAMS else (params, tuple(map(type, params))))
        try:
            name, fixed = encoder.groups.get(key) or encoder.group(key, self._fixed)
        except TypeError:  # a parameter that is not hashable (a client's list): not shared
            name, fixed = encoder.named(*self._fixed())
        rid = self.call_id.encode("utf-8", "replace")
        if self.own_id and len(rid) == 28 and rid.startswith(b"req_"):  # ours: req_ and 24 hex digits
            request_id = _REQUEST_ID + rid
        else:
            request_id = encoder.attribute("relaygate.request_id", self.tracing.text(self.call_id))
        if self.remote_parent:
            state = self.trace_state
            parent = b"".join((field(b"\x1a", text(state)) if state else b"", PARENT_ID,
                               self.parent_id.to_bytes(8, "big")))
        else:
            parent = b""
        if self.error_type is None:
            usage = self.usage
            tokens = _tokens(encoder, usage) if usage is not None and usage.known else b""
            cost = _COST + pack_double(self.cost / 1e9)
        else:
            tokens = cost = b""
        return b"".join((TRACE_ID, self.trace_bytes, SPAN_ID, self.span_id.to_bytes(8, "big"),
                         parent, name, _SERVER, pack_times(0x39, self.start, 0x41, self.end_time), fixed,
                         request_id, tokens, cost, TAILS[self.error][self.remote_parent]))

    def _fixed(self) -> tuple[str, dict[str, Any]]:
        text = self.tracing.text
        model = text(self.model)
        op = OPERATIONS[self.route]
        attrs: dict[str, Any] = {"gen_ai.operation.name": op, "gen_ai.request.model": model,
                                 "relaygate.stream": self.stream}
        for (_, attr), v in zip(REQUEST_PARAMS, self.params, strict=True):
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                attrs[attr] = v
        attrs["relaygate.attempts"] = self.attempts
        dep = self.dep
        if dep is not None:
            attrs["relaygate.deployment"] = dep.name
            attrs["relaygate.model"] = dep.model_name
            attrs["gen_ai.provider.name"] = dep.provider_type
        if self.fallbacks:
            attrs["relaygate.fallbacks"] = self.fallbacks
        if self.cache_hit:
            attrs["relaygate.cache_hit"] = True
        if self.faults:
            attrs["relaygate.faults"] = self.faults
        if self.status is not None:
            attrs["http.response.status_code"] = self.status
        if self.error_type is not None:
            attrs["error.type"] = self.error_type
        return f"{op} {model}"[:MAX_TEXT], attrs

    def _own(self) -> dict[str, Any]:
        rid = self.call_id
        if not (self.own_id and len(rid) == 28 and rid.startswith("req_")):
            rid = self.tracing.text(rid)
        attrs: dict[str, Any] = {"relaygate.request_id": rid}
        if self.error_type is None:
            _usage(attrs, self.usage)
            attrs["relaygate.cost_usd"] = self.cost / 1e9
        return attrs


class AttemptSpan:
    """The CLIENT span of one upstream attempt, beneath the call's; raw values, like ``CallTrace``'s."""

    __slots__ = ("trace", "span_id", "start", "end_time", "error", "dep", "asked", "attempt", "retry_reason",
                 "fallback", "status", "usage", "error_type")
    kind = CLIENT
    remote_parent = False

    def __init__(self, trace: CallTrace, dep: Deployment, call: Call) -> None:
        self.trace = trace
        self.span_id = trace.tracing.bits(64) or 1
        self.dep = dep
        self.asked = call.model
        self.attempt = call.attempts
        self.retry_reason = trace.last_error
        self.fallback = bool(call.fallbacks)
        self.error = False
        self.status: int | None = None
        self.usage: Usage | None = None
        self.error_type: str | None = None
        self.start = time_ns()

    def __call__(self, reply: Reply | None, error: BaseException | None) -> None:
        """The attempt's end (its reply delivered, or its error): the span to the export queue."""
        if error is None:
            if reply is not None:
                self.status = reply.status
                self.usage = reply.usage
        else:
            status, kind, _ = error_fields(error)
            if isinstance(error, GatewayError):
                self.trace.last_error = error.kind
            self.status = status
            self.error_type = kind or "internal"
            self.error = True
        self.end_time = time_ns()
        self.trace.tracing.queue.put(self)

    # made in the export thread
    @property
    def trace_id(self) -> int:
        return self.trace.trace_id

    @property
    def parent_id(self) -> int:
        return self.trace.span_id

    @property
    def trace_state(self) -> str:
        return self.trace.trace_state

    @property
    def name(self) -> str:
        return self._fixed()[0]

    @property
    def attrs(self) -> dict[str, Any]:
        attrs = self._fixed()[1]
        _usage(attrs, self.usage)
        return attrs

    def encoded(self, encoder: SpanEncoder) -> bytes:
        """Its ``Span`` message; all its attributes but the usage are shared by most attempts on a deployment."""
        trace = self.trace
        key = (self.dep, self.asked, self.attempt, self.retry_reason, self.fallback, self.status, self.error_type,
               trace.route)
        name, fixed = encoder.groups.get(key) or encoder.group(key, self._fixed)
        usage = self.usage
        state = trace.trace_state
        return b"".join((TRACE_ID, trace.trace_bytes, SPAN_ID, self.span_id.to_bytes(8, "big"),
                         field(b"\x1a", text(state)) if state else b"", PARENT_ID, trace.span_id.to_bytes(8, "big"),
                         name, _CLIENT, pack_times(0x39, self.start, 0x41, self.end_time), fixed,
                         _tokens(encoder, usage) if usage is not None and usage.known else b"",
                         _LOCAL_TAILS[self.error]))

    def _fixed(self) -> tuple[str, dict[str, Any]]:
        dep = self.dep
        op = OPERATIONS[self.trace.route]
        upstream = dep.upstream_model(self.asked)
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": op, "gen_ai.provider.name": dep.provider_type,
            "gen_ai.request.model": self.trace.tracing.text(upstream),
            "relaygate.deployment": dep.name, "relaygate.model": dep.model_name, "relaygate.attempt": self.attempt,
        }
        if self.retry_reason is not None:
            attrs["relaygate.retry_reason"] = self.retry_reason
        if self.fallback:
            attrs["relaygate.fallback"] = True
        if self.status is not None:
            attrs["http.response.status_code"] = self.status
        if self.error_type is not None:
            attrs["error.type"] = self.error_type
        return f"{op} {upstream}"[:MAX_TEXT], attrs


def _tokens(encoder: SpanEncoder, usage: Usage) -> bytes:
    """A known usage's two attributes, encoded; kept for the next spans with the same counts (ints, typed so)."""
    memo = encoder.memo
    counts = (INPUT_TOKENS, usage.prompt_tokens, usage.completion_tokens)
    encoded = memo.get(counts)
    if encoded is None:
        attribute = encoder.attribute
        encoded = encoder.remember(counts, attribute(INPUT_TOKENS, counts[1]) + attribute(OUTPUT_TOKENS, counts[2]))
    return encoded


def _usage(attrs: dict[str, Any], usage: Usage | None) -> None:
    if usage is not None and usage.known:
        attrs[INPUT_TOKENS] = usage.prompt_tokens
        attrs[OUTPUT_TOKENS] = usage.completion_tokens
