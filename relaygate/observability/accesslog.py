"""The access log: one JSON line per request at INFO on the ``relaygate.access`` logger.

Free text that came from outside (the request id a client chose, the model name it sent, an error message
that may quote an upstream) goes through the request log's redaction; bodies and keys never appear, only the
key's id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import orjson

from relaygate.core.call import Call, Reply
from relaygate.requestlog.redact import Redactor
from relaygate.server.http import error_fields

log = logging.getLogger("relaygate.access")

MAX_TEXT = 500  # characters of any free-text value (model, request id, error message)


class AccessLog:
    """Writes the line of each finished call."""

    def __init__(self, redact: Redactor, cost: Callable[[Call, Reply | None], int]) -> None:
        self.redact = redact
        self.cost = cost

    def record(self, call: Call, reply: Reply | None, error: BaseException | None) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        log.info("%s", orjson.dumps(self.line(call, reply, error)).decode())

    def line(self, call: Call, reply: Reply | None, error: BaseException | None) -> dict[str, object]:
        now = time.monotonic()
        status, kind, message = error_fields(error)
        if error is None:
            status = reply.status if reply is not None else 200
        dep = call.deployment
        usage = reply.usage if reply is not None else None
        first = reply.first_byte_at if reply is not None else None
        key = call.key
        out: dict[str, object] = {
            "ts": round(time.time(), 3), "request_id": self._text(call.id), "route": str(call.route),
            "model": self._text(call.model), "deployment": dep.name if dep is not None else None,
            "provider": dep.provider_type if dep is not None else None, "stream": call.stream, "status": status,
            "latency_ms": round((now - call.started) * 1000, 3),
            "ttft_ms": round((first - call.started) * 1000, 3) if first is not None else None,
            "attempts": call.attempts, "key_id": key.id if key is not None else None,
            "team_id": key.team_id if key is not None else None,
        }
        if usage is not None and usage.known:
            out["prompt_tokens"] = usage.prompt_tokens
            out["completion_tokens"] = usage.completion_tokens
        out["cost_usd"] = self.cost(call, reply) / 1e9
        if call.fallbacks:
            out["fallbacks"] = list(call.fallbacks)
        if call.cache_hit:
            out["cache_hit"] = True
        if call.faults:
            out["faults"] = list(call.faults)
        if kind is not None:
            out["error"] = kind
            out["error_message"] = self._text(message or "")
        return out

    def _text(self, text: str) -> str:
        return self.redact(text[:2 * MAX_TEXT])[:MAX_TEXT]
