"""The audit layer: one request-log row per call, built when delivery ended, queued for the writer."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from ..call import Call, Handler, Reply
from ..config import RequestLogConfig
from ..errors import GatewayError
from ..http import ClientGone
from .redact import Redactor
from .requestlog import RequestLogWriter

log = logging.getLogger("relaygate.requestlog")

CLIENT_CLOSED = 499  # nginx's status for "the client went away before the answer was complete"


_GENERATED_ID = re.compile(r"req_[0-9a-f]{24}")


def _unserializable(value: Any) -> str:
    """How a body value that is not JSON (an upload, bytes) appears in the log."""
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return f"<{type(value).__name__}>"


def error_fields(error: BaseException | None) -> tuple[int | None, str | None, str | None]:
    """(status, error kind, message) of a failure; (None, None, None) when there was none."""
    if error is None:
        return None, None, None
    if isinstance(error, GatewayError):
        return error.status, error.kind, error.message
    if isinstance(error, (ClientGone, asyncio.CancelledError, ConnectionError)):
        return CLIENT_CLOSED, "client_closed", "the client closed the connection"
    return 500, "internal", type(error).__name__


class AuditLayer:
    """The outermost pipeline layer: every call, failed or not, ends as one row."""

    def __init__(self, next_handler: Handler, writer: RequestLogWriter, config: RequestLogConfig,
                 cost: Callable[[Call, Reply | None], int]) -> None:
        self.next = next_handler
        self.writer = writer
        self.config = config
        self.cost = cost
        self.redact = Redactor(config.redact)
        # row ids: a random per-instance prefix and a counter (unique without a syscall per row)
        self._uid_prefix = os.urandom(8).hex()
        self._uid_next = itertools.count()
        self._day: tuple[float, float, str] = (0.0, 0.0, "")  # [start, end) of the cached UTC day string

    async def __call__(self, call: Call) -> Reply:
        try:
            reply = await self.next(call)
        except BaseException as e:
            self.record(call, None, e)
            raise
        if self.config.bodies and reply.stream is not None:
            reply.stream = self._tee(reply.stream, call)
        reply.on_done(lambda r, err: self.record(call, r, err))
        return reply

    async def _tee(self, stream: AsyncIterator[bytes], call: Call) -> AsyncIterator[bytes]:
        """Keep the first ``max_body_chars`` bytes of a stream for the log while it passes through."""
        kept: list[bytes] = []
        room = self.config.max_body_chars
        try:
            async for chunk in stream:
                if room > 0:
                    kept.append(chunk[:room])
                    room -= len(chunk)
                yield chunk
        finally:
            call.meta["streamed_body"] = b"".join(kept)
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    def record(self, call: Call, reply: Reply | None, error: BaseException | None) -> None:
        try:
            row = self.row(call, reply, error)
        except Exception:  # a bookkeeping bug must not cost the row: keep what is certain
            log.exception("request log: building the row of %s failed; writing a reduced row", call.id)
            row = self.row(call, None, error, bodies=False)
        self.writer.submit(row)

    def day(self, now: float) -> str:
        start, end, text = self._day
        if not start <= now < end:
            start = now - now % 86400
            text = time.strftime("%Y-%m-%d", time.gmtime(now))
            self._day = (start, start + 86400, text)
        return text

    def row(self, call: Call, reply: Reply | None, error: BaseException | None,
            bodies: bool = True) -> dict[str, Any]:
        now = time.time()
        mono = time.monotonic()
        status, kind, message = error_fields(error)
        usage = reply.usage if reply is not None else None
        key = call.key
        dep = call.deployment
        first = reply.first_byte_at if reply is not None else None
        row: dict[str, Any] = {
            "uid": f"{self._uid_prefix}{next(self._uid_next):016x}",
            "request_id": call.id if _GENERATED_ID.fullmatch(call.id) else self.redact(call.id[:200]),
            "ts": now,
            "day": self.day(now),
            "key_id": getattr(key, "id", None),
            "team_id": getattr(key, "team_id", None),
            "user_id": getattr(key, "user_id", None),
            "model": call.model,
            "deployment": dep.name if dep is not None else None,
            "provider": dep.provider_type if dep is not None else None,
            "route": call.route,
            "stream": call.stream,
            "status": status if status is not None else (reply.status if reply is not None else 200),
            "error": kind,
            "error_message": self.redact(message[:2000]) if message else None,
            "latency_ms": round((mono - call.started) * 1000, 3),
            "ttft_ms": round((first - call.started) * 1000, 3) if first is not None else None,
            "prompt_tokens": usage.prompt_tokens if usage is not None and usage.known else None,
            "completion_tokens": usage.completion_tokens if usage is not None and usage.known else None,
            "cached_tokens": usage.cached_tokens if usage is not None and usage.known else None,
            "cost_nano": self.cost(call, reply),
            "cache_hit": bool(call.meta.get("cache_hit")),
            "attempts": call.attempts,
            "client_ip": call.client_ip or None,
            "request_body": None,
            "response_body": None,
        }
        if self.config.bodies and bodies:
            limit = self.config.max_body_chars
            row["request_body"] = self.redact(orjson.dumps(call.body, default=_unserializable).decode()[:limit])
            body = reply.body if reply is not None and reply.body is not None else call.meta.get("streamed_body")
            if body:
                row["response_body"] = self.redact(body[:limit].decode("utf-8", "replace"))
        return row
