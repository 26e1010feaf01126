"""Minimal ASGI request/response helpers for the hot path (no web framework: docs/architecture.md)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from relaygate.core import jsonvalue
from relaygate.core.aiter import aclose
from relaygate.core.call import Reply, header_pairs
from relaygate.core.errors import (
    BadRequest,
    GatewayError,
    PayloadTooLarge,
    RequestTimeout,
    cut_by_shutdown,
    shutdown_error,
)
from relaygate.core.logtext import loggable
from relaygate.server.disconnect import DisconnectWatch, Watchers

log = logging.getLogger("relaygate")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

BODY_TIMEOUT = "relaygate.body_timeout"  # in a request's scope once the server cut its slow body short
# An ASGI extension of relaygate's own server (server/guard.py): a response start message may carry header lines
# in wire form under this key, which the server writes as they are (``Reply.raw_headers``); another server
# gets them as (name, value) pairs
HEAD_LINES = "relaygate.head_lines"


class RequestIds:
    """Request ids ``req_<24 hex>``: a random per-process prefix and a counter (no syscall per request)."""

    __slots__ = ("_prefix", "_counter")

    def __init__(self) -> None:
        self._prefix = "req_" + os.urandom(6).hex()
        self._counter = itertools.count(int.from_bytes(os.urandom(4), "big"))

    def new(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFF:012x}"


class Request:
    """One HTTP request: headers are read once into a dict of lower-case names."""

    __slots__ = ("scope", "receive", "headers", "id", "params", "_body", "body_sha256", "started", "task", "_watchers",
                 "_watch")

    def __init__(self, scope: Scope, receive: Receive, ids: RequestIds, watchers: Watchers | None = None) -> None:
        self.scope = scope
        self.receive = receive
        self.headers: dict[str, str] = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        rid = self.headers.get("x-request-id")
        self.id = rid if rid and len(rid) <= 200 and rid.isprintable() else ids.new()
        self.params: dict[str, str] = {}
        self._body: bytes | None = None
        self.body_sha256: str | None = None  # the body's SHA-256 (hex), once a SigV4 check hashed it (api/bedrock)
        self.started = time.monotonic()
        self.task = asyncio.current_task()  # the task answering: a client that leaves cancels it
        self._watchers = watchers
        self._watch: DisconnectWatch | None = None

    @property
    def method(self) -> str:
        return str(self.scope["method"])

    @property
    def path(self) -> str:
        return str(self.scope["path"])

    @property
    def query(self) -> str:
        raw: bytes = self.scope.get("query_string", b"")
        return raw.decode("latin-1")

    @property
    def client_ip(self) -> str:
        client = self.scope.get("client")
        return str(client[0]) if client else ""

    async def body(self, limit: int) -> bytes:
        """The whole body, refusing (413) as soon as it is known to exceed ``limit`` bytes. Read here rather
        than through ``stream``: an async generator costs its frames and the event loop's bookkeeping of it
        (a WeakSet's add and remove, in Python), ~90 bytecodes a request."""
        if self._body is None:
            self._declared(limit)
            chunk, more, size = await self._next(limit, 0)
            chunks = [chunk]
            while more:
                chunk, more, size = await self._next(limit, size)
                chunks.append(chunk)
            self._body = chunk if len(chunks) == 1 else b"".join(chunks)
        return self._body

    @property
    def raw(self) -> bytes | None:
        """The whole body's bytes once read (``body``, ``json``), else None."""
        return self._body

    async def stream(self, limit: int) -> AsyncIterator[bytes]:
        """The body as it arrives, refusing (413) once more than ``limit`` bytes came (or were declared)."""
        self._declared(limit)
        size = 0
        more = True
        while more:
            chunk, more, size = await self._next(limit, size)
            if chunk:
                yield chunk

    def _declared(self, limit: int) -> None:
        """Refuse a body whose declared length exceeds ``limit`` before reading it."""
        declared = self.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise BadRequest("invalid content-length header")
            if int(declared) > limit:
                raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit} bytes")

    async def _next(self, limit: int, size: int) -> tuple[bytes, bool, int]:
        """The body's next chunk, whether more follows and the body's size with it (``size`` before it),
        refusing (413) past ``limit``; a disconnect raises."""
        msg = await self.receive()
        if msg["type"] == "http.disconnect":
            if self.scope.get(BODY_TIMEOUT):  # the server's guard cut a body that came too slowly
                raise RequestTimeout("the request body arrived too slowly; the server stopped waiting")
            raise ClientGone()
        more = msg.get("more_body", False)
        if not more and (watchers := self._watchers) is not None and self.task is not None:
            # nothing reads the client again until the answer goes out: it is watched meanwhile if the
            # call lasts (from here: a reader may stop at the last chunk, as the multipart parser does)
            watchers.waiting[self] = watchers.tick
            if watchers.timer is None:
                watchers.start()
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        return chunk, more, size

    def watch(self) -> None:
        """Watch the client from now on (``Watchers`` calls this once the call lasted)."""
        assert self.task is not None
        self._watch = DisconnectWatch(self.receive, self.task)

    @property
    def client_left(self) -> bool:
        """True once the client disconnected after sending its body (the answering task was cancelled)."""
        return self._watch is not None and self._watch.gone

    def stop_watching(self) -> bool:
        """Stop watching for a disconnect, as the answer goes out (a stream watches on its own); True when the
        client had left (the answering task was cancelled)."""
        watch = self._watch
        if watch is not None:
            watch.close()
            return watch.gone
        if self._watchers is not None:
            self._watchers.waiting.pop(self, None)
        return False

    async def json(self, limit: int, parse: Callable[[bytes], Any] = jsonvalue.loads) -> Any:
        """The body's JSON value: the one place request bodies are parsed, bounded as ``jsonvalue`` says
        (``parse``: ``jsonvalue.loads``, or ``loads_dumped`` for the value and what the gateway read of it)."""
        raw = await self.body(limit)
        if not raw:
            raise BadRequest("the request body is empty; expected a JSON object")
        try:
            return parse(raw)
        except jsonvalue.JSONRejected as e:
            raise BadRequest(f"the request body is not accepted: {e.message}", param=e.param) from None


class ClientGone(Exception):
    """The client disconnected before we could answer."""


CLIENT_CLOSED = 499  # nginx's status for "the client went away before the answer was complete"


def error_fields(error: BaseException | None) -> tuple[int | None, str | None, str | None]:
    """(status, error kind, message) of a failure, as the request log and the metrics count it; (None, None,
    None) when there was none."""
    if error is None:
        return None, None, None
    if isinstance(error, GatewayError):
        return error.status, error.kind, error.message
    if cut_by_shutdown(error):  # the server ended it, not the client
        return error_fields(shutdown_error())
    if isinstance(error, (ClientGone, asyncio.CancelledError, ConnectionError)):
        return CLIENT_CLOSED, "client_closed", "the client closed the connection"
    return 500, "internal", type(error).__name__


def _headers(pairs: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs.items()]


class Response:
    """A complete response."""

    __slots__ = ("status", "body", "headers", "media_type", "reply")

    def __init__(self, body: bytes, status: int = 200, headers: dict[str, str] | None = None,
                 media_type: str = "application/json", reply: Reply | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers if headers is not None else {}  # a content-type here overrides media_type
        self.media_type = media_type
        self.reply = reply  # finished once sent (metering, logging and stats hang on it)

    async def send(self, send: Send, receive: Receive, request_id: str, scope: Scope | None = None) -> None:
        """Send the response (``scope``: the request's, which says whether its server takes header lines)."""
        headers = self.headers
        h = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        if "content-type" not in headers:
            h.append((b"content-type", self.media_type.encode("latin-1")))
        h.append((b"content-length", str(len(self.body)).encode()))
        h.append((b"x-request-id", request_id.encode("latin-1")))
        error: BaseException | None = None
        try:
            await send(start_message(self.status, h, self.reply.raw_headers if self.reply is not None else b"",
                                     scope))
            await send({"type": "http.response.body", "body": self.body})
        except BaseException as e:
            error = e
            raise
        finally:
            if self.reply is not None:
                self.reply.finish(error)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers)


def error_response(err: GatewayError) -> Response:
    return Response(orjson.dumps(err.body()), err.status, err.headers)


def start_message(status: int, headers: list[tuple[bytes, bytes]], lines: bytes, scope: Scope | None) -> Message:
    """The ASGI message that starts a response; header ``lines`` in wire form go as they are to a server that
    takes them (``HEAD_LINES``), as pairs to another."""
    message = {"type": "http.response.start", "status": status, "headers": headers}
    if lines:
        if scope is not None and HEAD_LINES in (scope.get("extensions") or ()):
            message[HEAD_LINES] = lines
        else:
            headers += header_pairs(lines)
    return message


class StreamResponse:
    """A streamed reply: chunks are sent as they come; a client disconnect cancels the upstream at once."""

    __slots__ = ("reply", "headers", "error_event")

    def __init__(self, reply: Reply, headers: dict[str, str],
                 error_event: Callable[[GatewayError], bytes]) -> None:
        self.reply = reply
        self.headers = headers
        self.error_event = error_event

    async def send(self, send: Send, receive: Receive, request_id: str, scope: Scope | None = None) -> None:
        """Send the stream (``scope``: the request's, which says whether its server takes header lines)."""
        reply = self.reply
        h = _headers({"content-type": reply.media_type, "cache-control": "no-cache", **self.headers})
        h.append((b"x-request-id", request_id.encode("latin-1")))
        if reply.media_type.startswith("text/event-stream"):
            h.append((b"x-accel-buffering", b"no"))
        # The stream is pumped in this task; one watcher task cancels it when the client goes away
        # (uvicorn's send() silently drops bytes once the client is gone, so only receive() tells).
        task = asyncio.current_task()
        assert task is not None
        gone = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            task.cancel()

        watcher = asyncio.ensure_future(watch())
        error: BaseException | None = None
        try:
            await self._pump(send, start_message(reply.status, h, reply.raw_headers, scope))
        except asyncio.CancelledError as e:
            if gone:
                error = ClientGone()
                task.uncancel()
            elif cut_by_shutdown(e):  # the server is stopping and its drain time is up
                task.uncancel()
                error = shutdown_error()
                final = self._final_event(error)
                if final is not None:
                    with contextlib.suppress(OSError, RuntimeError):  # RuntimeError: not started
                        await send({"type": "http.response.body", "body": final, "more_body": False})
            else:
                error = e
                raise
        except GatewayError as e:  # _pump already ended (or cut) the stream and logged why
            error = e
        finally:
            watcher.cancel()
            reply.finish(error)

    def _final_event(self, err: GatewayError) -> bytes | None:
        """The event that ends a failed stream, or None for a body that cannot carry one (audio, a file)."""
        try:
            return self.error_event(err)
        except Exception:
            return None

    async def _pump(self, send: Send, start: Message) -> None:
        assert self.reply.stream is not None
        stream = self.reply.stream
        await send(start)
        # the text a stream delivered is counted by the provider that reads its format (core/call.py:
        # Delivered): this loop is the hottest of a stream, and blind to the format
        try:
            async for chunk in stream:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except Exception as e:
            # bytes already reached the client: end the stream with an error event, never retry
            if isinstance(e, GatewayError):
                err = e
                log.warning("stream failed after first byte: %s", loggable(e.message))
            else:
                log.exception("stream failed inside the gateway")
                err = GatewayError("internal error in the gateway while streaming", code="internal_error")
            final = self._final_event(err)
            if final is None:  # this body (audio, a file) cannot carry an error: the connection is cut
                raise err from None
            try:
                await send({"type": "http.response.body", "body": final, "more_body": False})
            except OSError:
                pass
            raise err from None
        finally:
            await aclose(stream)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


