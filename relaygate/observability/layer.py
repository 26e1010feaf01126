"""The observe layer, outermost in the pipeline: calls in flight, each call's trace (its request span, the
trace id on its answer), and its metrics and access-log line once its answer was delivered (or failed). One
layer rather than one per concern: each layer is a coroutine more per call and a callback more at its end."""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING

from relaygate.core.call import Call, Handler, Reply
from relaygate.core.errors import GatewayError, mark_recorded
from relaygate.observability.accesslog import AccessLog
from relaygate.observability.metrics import Metrics

if TYPE_CHECKING:
    from relaygate.observability.tracing import Tracing

TRACE_HEADER = "x-relaygate-trace-id"  # the call's trace id (32 hex digits), on every answer of a traced call

log = logging.getLogger("relaygate")


class ObserveLayer:
    """Wraps the whole pipeline; ``metrics``, ``access`` or ``tracing`` may be None (off)."""

    def __init__(self, next_handler: Handler, metrics: Metrics | None, access: AccessLog | None,
                 tracing: Tracing | None = None) -> None:
        self.next = next_handler
        self.metrics = metrics
        self.access = access
        self.tracing = tracing
        self.only_metrics = access is None and tracing is None

    async def __call__(self, call: Call) -> Reply:
        m = self.metrics
        if m is not None:
            m.in_flight += 1
        tracing = self.tracing
        trace_header = tracing.begin(call) if tracing is not None else None  # sets call.trace when sampled
        try:
            reply = await self.next(call)
        except BaseException as e:
            if trace_header is not None and isinstance(e, GatewayError):
                e.headers[TRACE_HEADER] = trace_header
            try:
                self.done(call, None, e)
            except Exception:  # bookkeeping must never change the answer
                log.exception("metrics: recording the failed call %s failed", call.id)
            mark_recorded(e)
            raise
        if trace_header is not None:
            reply.headers[TRACE_HEADER] = trace_header
        if self.only_metrics and m is not None:  # straight to the count: two Python calls fewer a call
            reply.on_done(partial(m.record, call))
        else:
            reply.on_done(lambda r, err: self.done(call, r, err))
        return reply

    def done(self, call: Call, reply: Reply | None, error: BaseException | None) -> None:
        trace = call.trace
        if trace is not None:  # first: its cost figure is computed once, for the metrics too
            trace.done(reply, error)
        m = self.metrics
        if m is not None:
            m.record(call, reply, error)
        if self.access is not None:
            self.access.record(call, reply, error)
