"""The observe layer, outermost in the pipeline: calls in flight, each call's trace (its request span, the
trace id on its answer), and its metrics and access-log line once its answer was delivered (or failed). One
layer rather than one per concern: each layer is a coroutine more per call and a callback more at its end."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from relaygate.core.call import Call, Handler, Reply
from relaygate.core.errors import GatewayError, mark_recorded
from relaygate.observability.accesslog import AccessLog
from relaygate.observability.metrics import Metrics

if TYPE_CHECKING:
    from relaygate.observability.tracing import Tracing

TRACE_HEADER = "x-relaygate-trace-id"  # the call's trace id (32 hex digits), on every answer of a traced call
TRACE_LINE = TRACE_HEADER.encode() + b": "  # its line in wire form, but for the id and the line's end

log = logging.getLogger("relaygate")


def observe(next_handler: Handler, metrics: Metrics | None, access: AccessLog | None,
            tracing: Tracing | None = None) -> Handler:
    """The observe layer over ``next_handler``: the metrics' own when nothing else observes."""
    if access is None and tracing is None and metrics is not None:
        return MetricsLayer(next_handler, metrics)
    return ObserveLayer(next_handler, metrics, access, tracing)


def failed(call: Call, error: BaseException, done: Callable[[Reply | None, BaseException], None]) -> None:
    """A call that raised: ``done(None, error)``, which must not change the answer; the server must not count
    it again."""
    try:
        done(None, error)
    except Exception:  # bookkeeping must never change the answer
        log.exception("metrics: recording the failed call %s failed", call.id)
    mark_recorded(error)


class MetricsLayer:
    """The observe layer when only the metrics are on (the default): a call is counted by the reply's done
    callback itself (``Metrics.record``), and this coroutine, resumed at every suspension of the call, does
    nothing else."""

    def __init__(self, next_handler: Handler, metrics: Metrics) -> None:
        self.next = next_handler
        self.metrics = metrics

    async def __call__(self, call: Call) -> Reply:
        m = self.metrics
        m.started += 1
        try:
            reply = await self.next(call)
        except BaseException as e:
            failed(call, e, partial(m.record, call))
            raise
        reply._done.append(partial(m.record, call))  # Reply.on_done's own, without its call
        return reply


class ObserveLayer:
    """Wraps the whole pipeline; ``metrics``, ``access`` or ``tracing`` may be None (off)."""

    def __init__(self, next_handler: Handler, metrics: Metrics | None, access: AccessLog | None,
                 tracing: Tracing | None = None) -> None:
        self.next = next_handler
        self.metrics = metrics
        self.access = access
        self.tracing = tracing

    async def __call__(self, call: Call) -> Reply:
        m = self.metrics
        if m is not None:
            m.started += 1
        tracing = self.tracing
        trace_header = tracing.begin(call) if tracing is not None else None  # sets call.trace when sampled
        try:
            reply = await self.next(call)
        except BaseException as e:
            if trace_header is not None and isinstance(e, GatewayError):
                e.headers[TRACE_HEADER] = trace_header.decode()
            failed(call, e, partial(self.done, call))
            raise
        done = reply._done  # Reply.on_done's list, without its call: each observer's own callback (run newest first)
        if m is not None:
            done.append(partial(m.record, call))
        if self.access is not None:
            done.append(partial(self.access.record, call))
        if trace_header is not None:  # a line in wire form, which the server writes as it is (Reply.raw_headers)
            reply.raw_headers = b"".join((reply.raw_headers, TRACE_LINE, trace_header, b"\r\n"))
            trace = call.trace
            if trace is not None:
                done.append(trace.done)
        return reply

    def done(self, call: Call, reply: Reply | None, error: BaseException | None) -> None:
        """A failed call's end, for every observer (a reply's end calls each observer's own)."""
        trace = call.trace
        if trace is not None:
            trace.done(reply, error)
        m = self.metrics
        if m is not None:
            m.record(call, reply, error)
        if self.access is not None:
            self.access.record(call, reply, error)
