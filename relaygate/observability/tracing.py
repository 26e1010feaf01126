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
import struct
from binascii import hexlify
from collections.abc import Callable
from time import monotonic, time_ns
from typing import TYPE_CHECKING, Any

from relaygate.core.call import Call, Reply, Route
from relaygate.core.errors import GatewayError
from relaygate.observability.otlp import (
    CLIENT,
    INTERNAL,
    MAX_BATCH,
    SERVER,
    OtlpExporter,
    SpanQueue,
    SpanRecord,
)
from relaygate.observability.otlpwire import (
    HEADS,
    KINDS,
    PARENT_ID,
    SPAN_ID,
    TAILS,
    TRACE_ID,
    double_prefix,
    field,
    framed,
    head,
    pack_times,
    string_prefix,
    text,
)
from relaygate.requestlog.redact import Redactor
from relaygate.server.http import error_fields

if TYPE_CHECKING:
    from relaygate.catalog.prices import Price
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
PARAM_NAMES = tuple(name for name, _ in REQUEST_PARAMS)
# CallTrace reads them by name, in this order
assert PARAM_NAMES == ("max_tokens", "max_completion_tokens", "temperature", "top_p")
NO_PARAMS = (None, None, None, None)
# W3C Trace Context: version-traceid-parentid-flags (lowercase hex); a later version may add fields after
TRACEPARENT = re.compile(r"(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-(?P<span>[0-9a-f]{16})"
                         r"-(?P<flags>[0-9a-f]{2})(?P<rest>-.*)?")
TRACESTATE = re.compile(r"[a-z0-9_\-*/@=,;.: \t]*", re.I)  # the characters of list members and separators
REQUEST_ID = re.compile(r"req_[0-9a-f]{24}")  # ours: nothing to redact
INPUT_TOKENS, OUTPUT_TOKENS = "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"
# the parts of a span message that never change, encoded once (observability/otlpwire.py)
_REQUEST_ID = string_prefix("relaygate.request_id", 28)  # our request ids' length
_COST = double_prefix("relaygate.cost_usd")
_pack_cost = struct.Struct(f"<{len(_COST)}sd").pack  # (_COST, usd): the cost attribute
_SERVER, _CLIENT = KINDS[SERVER], KINDS[CLIENT]
_LOCAL_TAILS = TAILS[0][0], TAILS[1][0]  # by error
# a plain call's two messages, framed: the struct's pack and the 13 fixed parts its values go between
# (CallTrace.encoded passes them, unpacked: no Python call of its own)
Packer = tuple[Callable[..., bytes], bytes, bytes, bytes, bytes, bytes, bytes, bytes, bytes, bytes, bytes, bytes, bytes,
               bytes]
# CallTrace._made: what the calls of one kind share
Made = tuple[bytes, bytes, bytes, bytes, "Price | None", bytes, "dict[int, Packer] | None"]


class Tracing:
    """This gateway's span queue, exporter thread, sampler and trace-context parser."""

    def __init__(self, config: TracingConfig, redact: Redactor, known: frozenset[str] = frozenset(),
                 cost: Callable[[Call, Reply | None], int] = lambda call, reply: 0,
                 price: Callable[[Deployment, str], Price] | None = None) -> None:
        assert config.endpoint is not None
        self.cost = cost  # a finished call's cost in nano-dollars (computed once per call, shared)
        self.price = price  # a deployment's per-token price: a call's cost made in the export thread
        self.queue = SpanQueue(config.queue_size)
        self.exporter = OtlpExporter(self.queue, config.endpoint,
                                     {k: v.get_secret_value() for k, v in config.headers.items()},
                                     config.timeout, config.batch_delay, {"service.name": config.service_name,
                                                                         "telemetry.sdk.name": "relaygate",
                                                                         "telemetry.sdk.language": "python"})
        # TraceIdRatioBased's rule (the SDK's, and other languages'): a new trace is kept when the low 64 bits
        # of its id are below ratio * 2^64, so every service sampling at one ratio keeps the same traces
        self.ratio_bound = round(config.sample_ratio * (1 << 64))
        self.sampling = self.ratio_bound < (1 << 64)  # else every new trace is kept: nothing to decide
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

    def begin(self, call: Call) -> bytes:
        """The call's trace: continued from its ``traceparent`` or new, sampled or not; when sampled its request
        span (``call.trace``), which the observe layer ends. Answers the trace id for the answer's header (32
        lowercase hex digits, encoded: the header goes out as a line in wire form, ``Reply.raw_headers``)."""
        parent = self.parent(call.headers) if "traceparent" in call.headers else None
        if parent is None:  # the trace id, the request span's id and its first attempt's, drawn at once
            ids = self.bits(256).to_bytes(32, "big")
            if not self.sampling or int.from_bytes(ids[8:16], "big") < self.ratio_bound:
                call.trace = CallTrace(self, call, ids)  # attempts, limits… get spans beneath
            return hexlify(ids[:16])  # (sampled out: the trace id still goes back, nothing else is done)
        # a continued trace follows its parent's decision
        ids = parent[0].to_bytes(16, "big") + self.bits(128).to_bytes(16, "big")
        if parent[2]:
            call.trace = trace = ContinuedTrace(self, call, ids)
            trace.parent = parent
        return hexlify(ids[:16])

    def flush(self) -> bool:
        """Send what is queued now (blocking)."""
        return self.exporter.flush()

    def close(self) -> None:
        """Export what is pending, then stop (blocking: run it off the event loop)."""
        self.exporter.close()


class CallTrace:
    """One call's trace: its SERVER span (``Call.trace``) and, on the same record, its first upstream attempt's
    CLIENT span (most calls make one attempt: one record, queued once, both messages written at once); the
    other spans beneath it (later attempts, limits, cache, condensation) come from here.

    On the request path it keeps raw values only: the ids as one run of bytes, the call as it came
    (``asked``) and as it ended (``shape``), each a tuple that is also the key of the encoded attributes the
    spans of its kind share; the reply's usage. Names and attributes are made, redacted and encoded in the
    export thread, once per kind of call, and so is the cost of a call its tokens price."""

    # last_error: the error class of the last failed attempt (why the next one), set when one failed (read with
    # getattr: a slot left unset costs nothing to the calls that never retry)
    __slots__ = ("tracing", "ids", "start", "end_time", "last_error", "call", "call_id", "own_id", "asked",
                 "shape", "usage", "cost", "a_key", "a_start", "a_end", "a_usage")
    kind = SERVER
    parent: tuple[int, int, bool, str] | None = None  # the client's traceparent, continued (``ContinuedTrace``)

    def __init__(self, tracing: Tracing, call: Call, ids: bytes) -> None:
        self.tracing = tracing
        self.ids = ids  # the trace id (16 bytes), this span's id (8), its first attempt's (8)
        self.call: Call | None = call  # until it ends (then only what the spans need of it is kept)
        self.call_id = call.id
        self.own_id = "x-request-id" not in call.headers  # then ours (http.RequestIds): nothing to redact
        # (the chat body is not made for tracing: the same-dialect fast path stays fast)
        if call.native is None or call.translated:  # PARAM_NAMES's values, each asked for (~1.8k less than a map)
            get = call.body.get
            params = (get("max_tokens"), get("max_completion_tokens"), get("temperature"), get("top_p"))
        else:
            params = NO_PARAMS
        self.asked: tuple[Any, ...] = (call.model, call.route, call.stream, params)
        # the first attempt: (deployment, model, the fallbacks before it (a tuple: true when it was one)[, status,
        # error type]: when it did not end with the call)
        self.a_key: tuple[Any, ...] = ()
        self.start = time_ns()

    def attempt(self, dep: Deployment, call: Call) -> AttemptSpan | None:
        """Start the span of an upstream attempt; calling what it answers with the attempt's outcome ends it
        (None: the first attempt, whose outcome the call's end reads from the call)."""
        if not self.a_key:  # the first: on this record, no callback of its own
            self.a_key = (dep, call.model, call.fallbacks)
            self.a_start = time_ns()
            return None
        if len(self.a_key) == 3:  # the first failed (another one follows): how, from the call's failures
            self._first_ended(call.failed_attempts, None, None, None, None)
        return AttemptSpan(self, dep, call)

    def _first_ended(self, failures: list[tuple[str, str, int, str, float, float]] | None, status: int | None,
                     kind: str | None, usage: Usage | None, end: int | None) -> None:
        """The first attempt's outcome: its upstream failure when it had one (the router keeps them), else the
        call's ``status``, ``kind`` and ``usage`` (it ended with the call, at ``end``)."""
        if failures:
            _, _, status, kind, _, ended = failures[0]
            self.last_error = kind
            self.a_usage = None
            self.a_end = time_ns() - round((monotonic() - ended) * 1e9)
        else:
            self.a_usage = usage
            self.a_end = end if end is not None else time_ns()
        self.a_key = (*self.a_key, status, kind)

    def step(self, name: str) -> SpanRecord:
        """An INTERNAL span beneath the request's (limits, cache, condensation)."""
        return SpanRecord(self.tracing.queue, self.trace_id, self.span_id, name, INTERNAL, {},
                          self.tracing.bits(64) or 1, self.trace_state)

    def done(self, reply: Reply | None, error: BaseException | None) -> None:
        """The call's end: what the span says of it (and its only attempt's), then the record to the export
        queue."""
        call = self.call
        if call is None:  # ended already
            return
        self.call = None
        if error is None:
            assert reply is not None  # a reply's own end (Reply.finish): only a failed call's has none, and an error
            status = reply.status
            self.usage = reply.usage
            kind = None
            # a metered call's cost now; else the figure another part made, or (None) the export thread's
            self.cost: int | None = call.cost_nano if call.meter is None else self.tracing.cost(call, reply)
        else:
            code, k, _ = error_fields(error)
            status = code or 0
            self.usage = None
            kind = k or "internal"
            self.cost = 0
        # (deployment, status, error type, attempts, fallbacks, cache hit, faults, model): the calls whose shape
        # is the same share their span's encoded name and attributes
        self.shape: tuple[Any, ...] = (call.deployment, status, kind, call.attempts, call.fallbacks, call.cache_hit,
                                       call.faults, call.model)
        end = self.end_time = time_ns()
        # its only attempt failed upstream before, or ended with the call's error (the client gone, a stream cut);
        # else it ended with the call, its reply the call's (the usual: its key stays as it began, read so)
        if (error is not None or call.failed_attempts) and len(self.a_key) == 3:
            if call.failed_attempts:
                self._first_ended(call.failed_attempts, status, kind, None, end)
            else:
                self._first_ended(None, code, kind, None, end)
        queue = self.tracing.queue  # SpanQueue.put, written out: a call's record is most of what it takes
        spans = queue.spans
        if len(spans) < queue.size:
            spans.append(self)
            if len(spans) == MAX_BATCH:  # a full batch: the export thread sends it now
                queue.wake.set()
        else:
            queue.dropped += 1

    # read in the export thread (and by tests: the Span protocol)
    @property
    def error(self) -> bool:
        """An error ended the call with a 5xx (a 4xx is the client's: not the server span's error)."""
        return self.shape[2] is not None and self.shape[1] >= 500

    @property
    def trace_id(self) -> int:
        return int.from_bytes(self.ids[:16], "big")

    @property
    def span_id(self) -> int:
        return int.from_bytes(self.ids[16:24], "big")

    @property
    def parent_id(self) -> int:
        return self.parent[1] if self.parent is not None else 0

    @property
    def trace_state(self) -> str:
        return self.parent[3] if self.parent is not None else ""

    @property
    def remote_parent(self) -> bool:
        return self.parent is not None

    @property
    def model(self) -> str:
        return str(self.asked[0])

    @property
    def route(self) -> Route:
        route: Route = self.asked[1]
        return route

    @property
    def name(self) -> str:
        return self._fixed()[0]

    @property
    def attrs(self) -> dict[str, Any]:
        return {**self._fixed()[1], **self._own()}

    def spans(self) -> list[CallTrace | AttemptSpan]:
        """The spans of this record: its own, and its first attempt's."""
        return [self, AttemptSpan.first(self)] if self.a_key else [self]

    def encoded(self, encoder: SpanEncoder) -> bytes:
        """Its ``Span`` messages, framed (and its first attempt's): the names and attributes the calls of one kind
        share, encoded once for them all, between each call's own ids, times, request id, usage and cost."""
        asked = self.asked
        p = asked[3]  # its parameters' types too: 1 == 1.0 == True, but OTLP tells int, double and bool apart
        if p is NO_PARAMS:  # a same-dialect call: no parameters read, nothing to type (a shorter key, never equal
            key: tuple[Any, ...] = (asked, self.shape, self.a_key)  # to a longer one)
        else:
            key = (asked, self.shape, self.a_key, p[0].__class__, p[1].__class__, p[2].__class__, p[3].__class__)
        last = encoder.last  # a batch's calls are mostly of one kind: the last one's, compared without a hash
        if key == last[0]:
            made = last[1]
        else:
            try:
                made = encoder.shared.get(key) or encoder.share(key, self._made)
                encoder.last = key, made
            except TypeError:  # a parameter that is not hashable (a client's list): not shared
                made = self._made(encoder)
        ids = self.ids
        usage = self.usage
        plain = made[6]  # a call of this kind is plain (one attempt, a success): its messages in one pack
        if plain is not None and usage is not None and usage.known and self.own_id and self.parent is None:
            rid = self.call_id.encode()  # ours, or made by a part of the gateway from ours or a header's text
            if len(rid) == 28 and rid.startswith(b"req_"):  # a new trace, our request id, the usage known: the usual
                tokens = encoder.memo.get((INPUT_TOKENS, usage.prompt_tokens, usage.completion_tokens)) or _tokens(
                    encoder, usage)
                pack, k0, k1, k2, k3, k4, k5, k6, k7, k8, k9, k10, k11, k12 = plain.get(len(tokens)) or _plain(
                    made, len(tokens))
                cost = self.cost
                if cost is None:
                    price = made[4]
                    cost = price.cost_nano(usage) if price is not None else 0
                end = self.end_time
                own = ids[16:24]
                # the server span (ids, own id, times, attributes, request id, tokens, cost, tail), then the client's
                return pack(k0, ids, k1, own, k2, self.start, k3, end, k4, rid, tokens, k5, cost / 1e9, k6, ids, k7,
                            ids[24:], k8, own, k9, self.a_start, k10, end, k11, tokens, k12)
        rid = self.call_id.encode("utf-8", "replace")
        trace, own = ids[:16], ids[16:24]
        if self.own_id and len(rid) == 28 and rid.startswith(b"req_"):  # ours: req_ and 24 hex digits
            attributes = made[5]  # with the request id's key: its value follows
        else:
            attributes, rid = made[1], encoder.attribute("relaygate.request_id", self.tracing.text(self.call_id))
        parent = self.parent
        if parent is None:
            state = up = b""
        else:
            state = field(b"\x1a", text(parent[3])) if parent[3] else b""
            up = state + PARENT_ID + parent[1].to_bytes(8, "big")
        if self.shape[2] is None:  # a success: its usage and cost
            if usage is not None and usage.known:
                tokens = encoder.memo.get((INPUT_TOKENS, usage.prompt_tokens, usage.completion_tokens)) or _tokens(
                    encoder, usage)
            else:
                tokens = b""
            money = _pack_cost(_COST, self._cost(made[4]) / 1e9)
            tail = TAILS[0][parent is not None]
        else:
            tokens = money = b""
            tail = TAILS[self.shape[1] >= 500][parent is not None]
        server = b"".join((TRACE_ID, trace, SPAN_ID, own, up, made[0], pack_times(0x39, self.start, 0x41, self.end_time),
                           attributes, rid, tokens, money, tail))
        a_key = self.a_key
        if not a_key:
            return framed(server)
        if len(a_key) == 3:  # it ended with the call, the call's reply its own
            a_end, a_error = self.end_time, False
        else:
            a_end, a_error = self.a_end, a_key[4] is not None
            a_usage = self.a_usage
            if a_usage is not usage:
                tokens = _tokens(encoder, a_usage) if a_usage is not None and a_usage.known else b""
        client = b"".join((TRACE_ID, trace, SPAN_ID, ids[24:], state, PARENT_ID, own, made[2],
                           pack_times(0x39, self.a_start, 0x41, a_end), made[3], tokens, _LOCAL_TAILS[a_error]))
        n, m = len(server), len(client)
        return b"".join((HEADS[n] if n < 4096 else head(n), server, HEADS[m] if m < 4096 else head(m), client))

    def _made(self, encoder: SpanEncoder) -> Made:
        """What the calls of this one's kind share: the request span's name and kind, its attributes, the
        same of its first attempt's span, the price of its tokens, the attributes with the key of our
        request ids (whose value follows), and when the kind is plain (a success, its one attempt ending with
        it) the packers that write both messages of such a call at once, by the length of its token counts."""
        name, attributes = encoder.named(*self._fixed())
        if self.a_key:
            a_name, a_attributes = encoder.named(*AttemptSpan.first(self)._fixed())
        else:
            a_name = a_attributes = b""
        plain: dict[int, Packer] | None = {} if self.shape[2] is None and len(self.a_key) == 3 else None
        return (name + _SERVER, attributes, a_name + _CLIENT, a_attributes, self._price(), attributes + _REQUEST_ID,
                plain)

    def _price(self) -> Price | None:
        """The per-token price of the call's deployment for the model it asked for (None: no deployment)."""
        dep, price = self.shape[0], self.tracing.price
        return price(dep, self.shape[7]) if dep is not None and price is not None else None

    def _cost(self, price: Price | None) -> int:
        """A successful call's cost in nano-dollars: its own figure, else its tokens priced."""
        if self.cost is not None:
            return self.cost
        usage = self.usage
        if price is None or usage is None:
            return 0
        return price.cost_nano(usage)

    def _fixed(self) -> tuple[str, dict[str, Any]]:
        text = self.tracing.text
        asked_model, route, stream, params = self.asked
        dep, status, error_type, attempts, fallbacks, cache_hit, faults, _ = self.shape
        model = text(asked_model)
        op = OPERATIONS[route]
        attrs: dict[str, Any] = {"gen_ai.operation.name": op, "gen_ai.request.model": model,
                                 "relaygate.stream": stream}
        for (_, attr), v in zip(REQUEST_PARAMS, params, strict=True):
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                attrs[attr] = v
        attrs["relaygate.attempts"] = attempts
        if dep is not None:
            attrs["relaygate.deployment"] = dep.name
            attrs["relaygate.model"] = dep.model_name
            attrs["gen_ai.provider.name"] = dep.provider_type
        if fallbacks:
            attrs["relaygate.fallbacks"] = fallbacks
        if cache_hit:
            attrs["relaygate.cache_hit"] = True
        if faults:
            attrs["relaygate.faults"] = faults
        if status is not None:
            attrs["http.response.status_code"] = status
        if error_type is not None:
            attrs["error.type"] = error_type
        return f"{op} {model}"[:MAX_TEXT], attrs

    def _own(self) -> dict[str, Any]:
        rid = self.call_id
        if not (self.own_id and len(rid) == 28 and rid.startswith("req_")):
            rid = self.tracing.text(rid)
        attrs: dict[str, Any] = {"relaygate.request_id": rid}
        if self.shape[2] is None:
            _usage(attrs, self.usage)
            attrs["relaygate.cost_usd"] = self._cost(self._price()) / 1e9
        return attrs


class ContinuedTrace(CallTrace):
    """The trace of a call whose client sent a ``traceparent``: its own slot for it (trace id, parent span id,
    sampled, tracestate), where a new trace reads the class's None."""

    __slots__ = ("parent",)
    parent: tuple[int, int, bool, str] | None


class AttemptSpan:
    """The CLIENT span of an upstream attempt after a call's first, beneath the call's; raw values, like
    ``CallTrace``'s."""

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
        self.retry_reason: str | None = getattr(trace, "last_error", None)
        self.fallback = bool(call.fallbacks)
        self.error = False
        self.status: int | None = None
        self.usage: Usage | None = None
        self.error_type: str | None = None
        self.start = time_ns()

    @classmethod
    def first(cls, trace: CallTrace) -> AttemptSpan:
        """The span of the first attempt a ``CallTrace`` keeps (its attributes are made by this class)."""
        span = cls.__new__(cls)
        span.trace = trace
        span.span_id = int.from_bytes(trace.ids[24:], "big")
        span.dep, span.asked, fallbacks = trace.a_key[:3]
        span.fallback = bool(fallbacks)
        span.attempt = 1
        span.retry_reason = None
        span.start = trace.a_start
        if len(trace.a_key) == 5:  # ended apart from the call
            span.status, span.error_type = trace.a_key[3:]
            span.error = span.error_type is not None
            span.usage = trace.a_usage
            span.end_time = trace.a_end
        elif trace.end_time:  # ended with the call, its reply the call's
            span.status, span.error_type, span.error = trace.shape[1], None, False
            span.usage = trace.usage
            span.end_time = trace.end_time
        return span

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
        """Its ``Span`` message, framed; all its attributes but the usage are shared by most attempts on a
        deployment."""
        trace = self.trace
        key = (self.dep, self.asked, self.attempt, self.retry_reason, self.fallback, self.status, self.error_type,
               trace.route)
        name, fixed = encoder.groups.get(key) or encoder.group(key, self._fixed)
        usage = self.usage
        state = trace.trace_state
        ids = trace.ids
        return framed(b"".join((TRACE_ID, ids[:16], SPAN_ID, self.span_id.to_bytes(8, "big"),
                                field(b"\x1a", text(state)) if state else b"", PARENT_ID, ids[16:24],
                                name, _CLIENT, pack_times(0x39, self.start, 0x41, self.end_time), fixed,
                                _tokens(encoder, usage) if usage is not None and usage.known else b"",
                                _LOCAL_TAILS[self.error])))

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


def _plain(made: Made, size: int) -> Packer:
    """The packer of a plain call's two messages (``CallTrace.encoded``'s usual case) whose token counts take
    ``size`` bytes: every byte but the call's own values is fixed for its kind, so one ``struct`` pack writes
    them all, framed (the same bytes as the general path: tests/test_otlpwire.py)."""
    server = 2 + 16 + 2 + 8 + len(made[0]) + 18 + len(made[5]) + 28 + size + len(_COST) + 8 + len(_LOCAL_TAILS[0])
    client = 2 + 16 + 2 + 8 + 2 + 8 + len(made[2]) + 18 + len(made[3]) + size + len(_LOCAL_TAILS[0])
    consts = (head(server) + TRACE_ID, SPAN_ID, made[0] + b"\x39", b"\x41", made[5], _COST,
              _LOCAL_TAILS[0] + head(client) + TRACE_ID, SPAN_ID, PARENT_ID, made[2] + b"\x39", b"\x41", made[3],
              _LOCAL_TAILS[0])
    # the server span's fixed parts and the client's between the values CallTrace.encoded passes
    pack = struct.Struct("<{}s16s{}s8s{}sQ{}sQ{}s28s{}s{}sd{}s16s{}s8s{}s8s{}sQ{}sQ{}s{}s{}s".format(
        *map(len, consts[:5]), size, *map(len, consts[5:12]), size, len(consts[12]))).pack
    packer: Packer = (pack, *consts)
    plain = made[6]
    assert plain is not None
    if len(plain) >= 64:
        plain.clear()
    plain[size] = packer
    return packer


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
