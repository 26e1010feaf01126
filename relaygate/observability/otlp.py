"""The trace exporter: finished spans wait in a bounded queue and a thread sends them in batches to an
OTLP/HTTP collector, encoded as OTLP's protobuf messages (written by ``otlpwire.py``).

A span on the request path is a plain slotted record (``SpanRecord``, or tracing.py's request and attempt
spans, which keep raw values and make their attributes only when asked, here); everything that costs (ids to
bytes, attributes, their encoding, the HTTP request) happens in the thread, a batch at a time. The OpenTelemetry SDK made, checked and converted each span and attribute on the request path: ~520k
instructions a call, most of a proxied request (docs/observability.md, Traces: cost).
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
import urllib.parse
from collections import deque
from typing import Any, Protocol

from relaygate.observability.otlpwire import SpanEncoder, framed

log = logging.getLogger("relaygate.tracing")

INTERNAL, SERVER, CLIENT = 1, 2, 3  # Span.SpanKind of the OTLP protocol
MAX_BATCH = 512  # spans per export request
MAX_FRAGMENTS = 4096  # encoded attributes kept for reuse (cleared when full)
UNIQUE = frozenset({"relaygate.request_id", "relaygate.cost_usd"})  # never the same twice: not kept
RETRY_STATUSES = frozenset({429, 502, 503, 504})  # the collector asks us to try again (OTLP/HTTP spec)


class Span(Protocol):
    """What the exporter reads of a finished span (in its thread: ``name`` and ``attrs`` may be made then)."""

    @property
    def trace_id(self) -> int: ...
    @property
    def span_id(self) -> int: ...
    @property
    def parent_id(self) -> int: ...  # 0: a root span
    @property
    def remote_parent(self) -> bool: ...
    @property
    def trace_state(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> int: ...
    @property
    def start(self) -> int: ...
    @property
    def end_time(self) -> int: ...
    @property
    def attrs(self) -> dict[str, Any]: ...
    @property
    def error(self) -> bool: ...

    def encoded(self, encoder: SpanEncoder) -> bytes:
        """Its ``Span`` message as a field of ``ScopeSpans`` (``framed(encoder.span(self))``, or quicker), or
        the messages of several spans it holds."""
        ...


class SpanRecord:
    """One span, as the request path leaves it: ids as ints, times in ns, attributes as plain values."""

    __slots__ = ("trace_id", "span_id", "parent_id", "remote_parent", "trace_state", "name", "kind", "start",
                 "end_time", "attrs", "error", "sink")

    def __init__(self, sink: SpanQueue, trace_id: int, parent_id: int, name: str, kind: int,
                 attrs: dict[str, Any], span_id: int, trace_state: str = "", remote_parent: bool = False) -> None:
        self.sink = sink
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id  # 0: a root span
        self.remote_parent = remote_parent
        self.trace_state = trace_state
        self.name = name
        self.kind = kind
        self.attrs = attrs
        self.error = False
        self.end_time = 0
        self.start = time.time_ns()

    def set_attribute(self, key: str, value: Any) -> None:
        self.attrs[key] = value

    def encoded(self, encoder: SpanEncoder) -> bytes:
        return framed(encoder.span(self))

    def end(self) -> None:
        self.end_time = time.time_ns()
        self.sink.put(self)


class SpanQueue:
    """Spans waiting for export; full: a span is dropped (counted), never waited for."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.spans: deque[Span] = deque()  # append and popleft are atomic: no lock on the request path
        self.dropped = 0
        self.wake = threading.Event()

    def put(self, span: Span) -> None:
        spans = self.spans
        n = len(spans)
        if n >= self.size:
            self.dropped += 1
            return
        spans.append(span)
        if n + 1 == MAX_BATCH:  # a full batch: send it now rather than at the next tick
            self.wake.set()

    def take(self, most: int) -> list[Span]:
        """The oldest ``most`` spans, at most (one taker at a time: the queue only grows meanwhile)."""
        pop = self.spans.popleft
        return [pop() for _ in range(min(len(self.spans), most))]


class OtlpExporter:
    """The export thread: every ``delay`` seconds (or as soon as a batch is full) it sends what is queued."""

    def __init__(self, queue: SpanQueue, endpoint: str, headers: dict[str, str], timeout: float, delay: float,
                 resource: dict[str, str]) -> None:
        self._encoder = SpanEncoder(resource, "relaygate", UNIQUE, MAX_FRAGMENTS)
        self.queue = queue
        self.headers = {**headers, "content-type": "application/x-protobuf"}
        self.timeout = timeout
        self.delay = delay
        self.url = urllib.parse.urlsplit(endpoint)
        self.path = (self.url.path or "/") + (f"?{self.url.query}" if self.url.query else "")
        self._conn: http.client.HTTPConnection | None = None  # kept alive between batches (this thread's)
        self.sent = 0
        self.failed = 0  # spans whose export failed (collector down or refusing)
        self._closing = False
        self._lock = threading.Lock()  # one export at a time: the thread's, or a flush's
        self.thread = threading.Thread(target=self._run, name="relaygate-otlp", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with self._lock:  # connected before the first batch: its lookup (the first imports the idna codec,
            try:  # ~5M instructions) and handshake are not paid with a batch waiting
                if self._conn is None:  # (unless a flush came first)
                    self._connect().connect()
            except OSError:  # the collector is not up yet: the first batch tries again
                self._drop()
        wake = self.queue.wake
        while not self._closing:
            full = wake.wait(self.delay)
            wake.clear()
            self.flush(full)

    def flush(self, full: bool = False) -> bool:
        """Send everything queued now (blocking); False when some of it could not be sent. ``full``: only full
        batches (woken by one: what arrives meanwhile waits for the next full batch or the delay, rather than
        going in small batches, each paying for its request)."""
        ok = True
        queue = self.queue
        with self._lock:
            while (not full or len(queue.spans) >= MAX_BATCH) and (batch := queue.take(MAX_BATCH)):
                try:
                    body = self.encode(batch)
                except Exception:  # a bug in making a span's attributes: that batch is lost, not the thread
                    log.exception("trace export: %d spans could not be encoded", len(batch))
                    self.failed += len(batch)
                    ok = False
                    continue
                ok = self._send(body, len(batch)) and ok
        return ok

    def close(self) -> None:
        """Stop the thread, then send what is left (blocking: run it off the event loop)."""
        self._closing = True
        self.queue.wake.set()
        self.thread.join(self.timeout + 5)
        self.flush()
        with self._lock:
            self._drop()

    def encode(self, batch: list[Span]) -> bytes:
        """One ExportTraceServiceRequest of ``batch``, serialised (``otlpwire.py``)."""
        return self._encoder.encode(batch)

    def _send(self, body: bytes, count: int) -> bool:
        """POST one batch on the kept-alive connection; a collector that asks to retry (or cannot be reached)
        gets two more tries. Redirects are not followed: the configured headers (a token) go to the configured
        URL only."""
        problem = ""
        pauses = iter((0.5, 1.0, None))
        while True:
            reused = self._conn is not None
            try:
                conn = self._conn or self._connect()
                conn.request("POST", self.path, body, self.headers)
                answer = conn.getresponse()
                answer.read()
                if answer.will_close:
                    self._drop()
                if 200 <= answer.status < 300:
                    self.sent += count
                    return True
                problem = f"HTTP {answer.status}"
                if answer.status not in RETRY_STATUSES:
                    break
            except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out, a malformed answer
                problem = type(e).__name__
                self._drop()
                if reused:  # the collector closed the kept-alive connection meanwhile: a new one, at once
                    continue
            pause = next(pauses)
            if pause is None or self._closing:
                break
            time.sleep(pause)
        self.failed += count
        log.warning("trace export failed (%s): %d spans dropped", problem, count)
        return False

    def _connect(self) -> http.client.HTTPConnection:
        url = self.url
        port = url.port
        if url.scheme == "https":
            self._conn = http.client.HTTPSConnection(url.hostname or "", port, timeout=self.timeout)
        else:
            self._conn = http.client.HTTPConnection(url.hostname or "", port, timeout=self.timeout)
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

