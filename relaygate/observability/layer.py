"""The observe layer, outermost in the pipeline: calls in flight, and each call's metrics and access-log
line once its answer was delivered (or failed)."""

from __future__ import annotations

import logging

from relaygate.core.call import Call, Handler, Reply
from relaygate.core.errors import mark_recorded
from relaygate.observability.accesslog import AccessLog
from relaygate.observability.metrics import Metrics

log = logging.getLogger("relaygate")


class ObserveLayer:
    """Wraps the whole pipeline; ``metrics`` or ``access`` may be None (off)."""

    def __init__(self, next_handler: Handler, metrics: Metrics | None, access: AccessLog | None) -> None:
        self.next = next_handler
        self.metrics = metrics
        self.access = access

    async def __call__(self, call: Call) -> Reply:
        m = self.metrics
        if m is not None:
            m.in_flight += 1
        try:
            reply = await self.next(call)
        except BaseException as e:
            try:
                self.done(call, None, e)
            except Exception:  # bookkeeping must never change the answer
                log.exception("metrics: recording the failed call %s failed", call.id)
            mark_recorded(e)
            raise
        reply.on_done(lambda r, err: self.done(call, r, err))
        return reply

    def done(self, call: Call, reply: Reply | None, error: BaseException | None) -> None:
        m = self.metrics
        if m is not None:
            m.in_flight -= 1
            m.record(call, reply, error)
        if self.access is not None:
            self.access.record(call, reply, error)
