"""The audit layer: one request-log row per call, built when delivery ended, queued for the writer."""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from relaygate.auth.authenticator import Authenticator, presented_key
from relaygate.config import RequestLogConfig
from relaygate.core.aiter import aclose
from relaygate.core.call import Call, Handler, Reply, Route
from relaygate.core.errors import AuthError, GatewayError, mark_recorded
from relaygate.core.scrub import Scrubber
from relaygate.requestlog.redact import Redactor
from relaygate.requestlog.writer import RequestLogWriter
from relaygate.server.http import Request, error_fields
from relaygate.store.rows import fit_text, size
from relaygate.store.schema import request_log

log = logging.getLogger("relaygate.requestlog")

# Requests refused for their key get a row each, but a flood of them must not become a flood of rows
# (disk and writer time an unauthenticated client could spend at will): a token bucket per gateway lets
# through a burst, then a steady trickle; the rows left out are counted into the next row written.
REFUSED_KEY_ROWS_PER_SECOND = 2.0
REFUSED_KEY_ROWS_BURST = 60.0


# The order of the values in a row: the request log table's columns.
COLUMNS: tuple[str, ...] = tuple(request_log.names)
# The sizes of the columns whose text comes from outside (the client, an upstream): those values are fitted
# here, as the row is built (the writer fits whole rows only where the database refuses one, or from the spool)
_REQUEST_ID = size(request_log.column("request_id"))
_MODEL = size(request_log.column("model"))
_ROUTE = size(request_log.column("route"))
UID_BASE = 1 << 64  # see AuditLayer.__init__
# the last three hex digits of a row's uid, by the row count's low 12 bits (see AuditLayer.uid)
_UID_LOW: tuple[str, ...] = tuple(f"{i:03x}" for i in range(4096))
_ROUTE_TEXT: dict[Route, str] = {r: str(r) for r in Route}  # a plain str: drivers bind it as it is


def _unserializable(value: Any) -> str:
    """How a body value that is not JSON (an upload, bytes) appears in the log."""
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return f"<{type(value).__name__}>"


class AuditLayer:
    """The outermost pipeline layer: every call, failed or not, ends as one row."""

    def __init__(self, next_handler: Handler, writer: RequestLogWriter, config: RequestLogConfig,
                 cost: Callable[[Call, Reply | None], int], scrub: Scrubber | None = None) -> None:
        self.next = next_handler
        self.writer = writer
        self.config = config
        self.cost = cost
        self.pii = Redactor(config.redact)
        self.scrub = scrub if scrub is not None else Scrubber()
        # read per row: plain attributes (the config's pydantic attribute hook costs ~400 instructions a read)
        self._bodies = config.bodies
        self._max_body = config.max_body_chars
        # row ids: a random per-instance prefix and the row count in 16 zero-padded hex digits (unique without a
        # syscall per row): the first 13 digits change every 4096 rows and are kept formatted with the prefix
        # (``_uid_high``), the last three come from a table; a third of the instructions of hex() of a count
        # from 2**64, which is past itertools.count's fast path
        self._uid_prefix = os.urandom(8).hex()
        self._uid_next = itertools.count()
        self._uid_high = ""
        self._day: tuple[float, float, str] = (0.0, 0.0, "")  # [start, end) of the cached UTC day string
        self._refused_tokens = REFUSED_KEY_ROWS_BURST
        self._refused_at = time.monotonic()
        self._refused_skipped = 0  # rows of refused keys left out since the last one written
        self._refused_warned = 0.0

    async def __call__(self, call: Call) -> Reply:
        try:
            reply = await self.next(call)
        except BaseException as e:
            self.record(call, None, e)
            mark_recorded(e)  # the server must not record it again
            raise
        if self._bodies and reply.stream is not None:
            kept: list[bytes] = []
            reply.stream = self._tee(reply.stream, kept)
            reply.on_done(lambda r, err: self.record(call, r, err, b"".join(kept)))
        else:
            reply.on_done(lambda r, err: self.record(call, r, err))
        return reply

    async def _tee(self, stream: AsyncIterator[bytes], kept: list[bytes]) -> AsyncIterator[bytes]:
        """Keep the first ``max_body_chars`` bytes of a stream in ``kept`` while it passes through."""
        room = self._max_body
        try:
            async for chunk in stream:
                if room > 0:
                    kept.append(chunk[:room])
                    room -= len(chunk)
                yield chunk
        finally:
            await aclose(stream)

    def record(self, call: Call, reply: Reply | None, error: BaseException | None, streamed: bytes | None = None,
               route: str | None = None) -> None:
        """Queue the call's row (``streamed``: the start of a streamed answer; ``route``: instead of the
        call's)."""
        try:
            row = self.row(call, reply, error, True, streamed, route)  # by position: a cheaper call
        except Exception:  # a bookkeeping bug must not cost the row: keep what is certain
            log.exception("request log: building the row of %s failed; writing a reduced row", call.id)
            row = self.row(call, None, error, bodies=False, route=route)
        self.writer.submit(row)

    def record_refused(self, request: Request, error: BaseException, auth: Authenticator | None) -> None:
        """The row of a request refused before it reached the pipeline (a body that is not JSON, a missing
        field, a body over the size limit, a missing or unknown key): no model and no deployment, the request
        path as its route, and the caller's key when it has one. Rows of requests refused for their key go
        through a token bucket (``REFUSED_KEY_ROWS_*``)."""
        if isinstance(error, AuthError):
            if not self._refused_key_row():
                return
            if self._refused_skipped:
                error = AuthError(f"{error.message} ({self._refused_skipped} more requests refused for their key "
                                  "were not logged one by one)", code=error.code)
                self._refused_skipped = 0
        key = None
        if auth is not None:
            try:
                key = auth.quick(presented_key(request.headers))
            except GatewayError:
                key = None
        path = request.path
        # it never became a call of a route: the row names the path instead (the call's route is not read)
        call = Call(id=request.id, route=Route.CHAT, model="", body={}, headers=request.headers,
                    client_ip=request.client_ip, started=request.started, key=key)
        self.record(call, None, error, route=fit_text((path[4:] if path.startswith("/v1/") else path)[:2 * _ROUTE],
                                                      _ROUTE))

    def _refused_key_row(self) -> bool:
        """Whether a request refused for its key gets its row (the token bucket), counting those that do not."""
        now = time.monotonic()
        refill = (now - self._refused_at) * REFUSED_KEY_ROWS_PER_SECOND
        tokens = min(REFUSED_KEY_ROWS_BURST, self._refused_tokens + refill)
        self._refused_at = now
        if tokens >= 1.0:
            self._refused_tokens = tokens - 1.0
            return True
        self._refused_tokens = tokens
        self._refused_skipped += 1
        if now - self._refused_warned >= 60.0:
            self._refused_warned = now
            log.warning("request log: requests refused for their key arrive faster than %.0f a second; "
                        "the rows over that are counted, not written", REFUSED_KEY_ROWS_PER_SECOND)
        return False

    def redact(self, text: str) -> str:
        """A row's free text: the gateway's secrets and upstream addresses (the one scrubber), then personal
        data and the configured patterns."""
        return self.pii(self.scrub.text(text))

    def day(self, now: float) -> str:
        start, end, text = self._day
        if not start <= now < end:
            start = now - now % 86400
            text = time.strftime("%Y-%m-%d", time.gmtime(now))
            self._day = (start, start + 86400, text)
        return text

    def row(self, call: Call, reply: Reply | None, error: BaseException | None, bodies: bool = True,
            streamed: bytes | None = None, route: str | None = None) -> tuple[Any, ...]:
        """The call's row, its values in the order of ``COLUMNS`` (a tuple: the writer binds it as it is)."""
        now = time.time()
        mono = time.monotonic()
        n = next(self._uid_next)
        low = n & 4095
        if not low:
            self._uid_high = self._uid_prefix + hex(UID_BASE + n)[3:16]
        status: int | None
        kind: str | None = None
        message: str | None = None
        if error is None:
            status = reply.status if reply is not None else 200
        else:
            status, kind, message = error_fields(error)
        usage = reply.usage if reply is not None else None
        if usage is not None and not usage.known:
            usage = None
        key = call.key
        dep = call.deployment
        deployment = provider = None
        if dep is not None:
            deployment, provider = dep.name, dep.provider_type
        first = reply.first_byte_at if reply is not None else None
        started = call.started
        # an id the client chose (x-request-id) may carry anything: it is redacted like the other free text,
        # then cut to its column (redaction can lengthen it; a secret across the column's end is still whole
        # when redacted); ours (``req_`` and 24 hex digits, from http.RequestIds) are left alone
        rid = call.id
        if len(rid) != 28 or "x-request-id" in call.headers or rid[:4] != "req_":  # (startswith parses its args)
            rid = fit_text(self.redact(rid[:2 * _REQUEST_ID]), _REQUEST_ID)
        model = call.model or None
        if model is not None and (len(model) > _MODEL or "\0" in model):  # the client's: any length, any text
            model = fit_text(model, _MODEL)
        request_body = response_body = None
        if bodies and self._bodies:
            limit = self._max_body
            native = call.untranslated  # a foreign client's call not translated: its own body is what was sent
            sent = native.body if native is not None else call.body
            request_body = self.redact(orjson.dumps(sent, default=_unserializable).decode()[:limit])
            body = reply.body if reply is not None and reply.body is not None else streamed
            if body:
                response_body = fit_text(self.redact(body[:limit].decode("utf-8", "replace")), math.inf)
        day = self._day
        return (
            self._uid_high + _UID_LOW[low],  # uid
            rid,  # request_id
            now,  # ts
            day[2] if day[0] <= now < day[1] else self.day(now),  # day
            None if key is None else key.id,  # key_id
            None if key is None else key.team_id,  # team_id
            None if key is None else key.user_id,  # user_id
            model,  # model
            deployment,  # deployment
            provider,  # provider
            (_ROUTE_TEXT.get(call.route) or str(call.route)) if route is None else route,  # route
            1 if call.stream else 0,  # stream (an int: drivers bind it without an adapter lookup)
            status,  # status
            kind,  # error
            fit_text(self.redact(message[:2000]), math.inf) if message else None,  # error_message
            int((mono - started) * 1e6 + 0.5) / 1000,  # latency_ms, to the µs (round(x, 3) costs twice as much)
            None if first is None else int((first - started) * 1e6 + 0.5) / 1000,  # ttft_ms
            None if usage is None else usage.prompt_tokens,  # prompt_tokens
            None if usage is None else usage.completion_tokens,  # completion_tokens
            None if usage is None else usage.cached_tokens,  # cached_tokens
            self.cost(call, reply),  # cost_nano
            1 if call.cache_hit else 0,  # cache_hit
            call.attempts,  # attempts
            call.client_ip or None,  # client_ip
            request_body,  # request_body
            response_body,  # response_body
            1 if usage is not None and usage.estimated else 0,  # usage_estimated
            call.saved_nano,  # saved_nano
            None if call.attempts < 2 else attempt_log(call, status, kind, mono),  # attempt_log
            None if call.condensed is None else call.condensed.as_json(),  # condensed
        )


def attempt_log(call: Call, status: int | None, kind: str | None, now: float) -> str:
    """A retried call's attempts, as the request log keeps them: a JSON array of ``{"deployment", "provider",
    "status", "error", "start_ms", "ms"}`` in order, ``start_ms`` from the call's start. The failed ones were
    noted as they failed (routing/router.py: attempt); the last, when it did not fail there (it answered, or
    its stream broke or was cut later), ends with the call, with the call's status and error."""
    t0 = call.started
    out = [{"deployment": name, "provider": provider, "status": st, "error": err,
            "start_ms": int((start - t0) * 1e6 + 0.5) / 1000, "ms": int((end - start) * 1e6 + 0.5) / 1000}
           for name, provider, st, err, start, end in call.failed_attempts or ()]
    dep = call.deployment
    if len(out) < call.attempts and dep is not None:
        start = call.attempt_at
        out.append({"deployment": dep.name, "provider": dep.provider_type, "status": status, "error": kind,
                    "start_ms": int((start - t0) * 1e6 + 0.5) / 1000, "ms": int((now - start) * 1e6 + 0.5) / 1000})
    return orjson.dumps(out).decode()
