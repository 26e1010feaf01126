"""One upstream response: status and headers first, the body as it arrives."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from relaygate.upstream.errors import ConnectionClosed, TimedOut

if TYPE_CHECKING:
    from relaygate.upstream.connection import Connection

INF = float("inf")


class Response:
    """The answer to one request, readable once: ``read()`` for the whole body, or ``async for chunk in
    resp`` (also ``resp.content.iter_any()``) for the chunks as they arrive.

    ``headers`` is a dict by lower-case name (look names up in lower case). The connection goes back to
    the pool by itself once the body is complete; ``release()`` (or leaving ``async with``) closes it
    instead when the body was not read to its end, and ``close()`` always does. A consumer that lags is
    not read for: reading pauses once ``read_buffer`` bytes wait unread.
    """

    __slots__ = ("status", "headers", "raw_headers", "head_only", "_loop", "_conn", "_chunks", "_buffered",
                 "_done", "_exc", "_waiter", "_phase", "_last_io", "_total_at", "_read", "_timer", "_sent_all",
                 "_read_all", "_body", "_what", "_left")

    def __init__(self, loop: asyncio.AbstractEventLoop, what: str, head_only: bool, total_at: float,
                 read_timeout: float | None) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.head_only = head_only  # a HEAD request: no body follows the head
        self._loop = loop
        self._conn: Connection | None = None
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._done = False  # the body is complete (it may still wait in _chunks)
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._phase = "read"  # what a pending waiter waits on: "read" or "write"
        self._last_io = 0.0  # kept only with a read timeout
        self._total_at = total_at
        self._read = read_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._sent_all = False  # every byte of the request was handed to the transport
        self._read_all = False  # read() wants the whole body: never pause for it
        self._body: bytes | None = None
        self._what = what  # "host:port", for messages
        self._left = False  # the reader left the rest of the body to the connection (``leave``)

    @property
    def content(self) -> Response:
        """aiohttp's spelling (``resp.content.iter_any()``), so callers switch by changing a type."""
        return self

    def iter_any(self) -> Response:
        return self

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> bytes:
        while True:
            chunks = self._chunks
            if chunks:
                self._chunks = []
                self._buffered = 0
                conn = self._conn
                if conn is not None and conn.read_paused:
                    conn.resume_reading()
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if self._done:
                raise StopAsyncIteration
            if self._exc is not None:
                raise self._exc
            await self._wait("read")

    async def read(self) -> bytes:
        """The whole body (the rest of it, if chunks were taken before)."""
        if self._body is not None:
            return self._body
        if not self._done:
            self._read_all = True
            conn = self._conn
            if conn is not None and conn.read_paused:
                conn.resume_reading()
            while not self._done:
                if self._exc is not None:
                    raise self._exc
                await self._wait("read")
        chunks = self._chunks
        self._chunks = []
        self._body = body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return body

    def release(self) -> None:
        """Done with the response: a complete body's connection is already pooled (or will be, once a left
        body ends); otherwise it is closed."""
        if not self._done and not self._left:
            self.close()

    def leave(self, grace: float) -> None:
        """The reader has all it wants (a stream's last event came) and reads no more, yet the body has not
        ended. The connection reads the rest by itself and goes back to the pool when the body ends, as it
        would have for the reader; if the body has not ended within ``grace`` seconds, it is closed. The
        bytes that come meanwhile are dropped once more than ``read_buffer`` wait (reading pauses then)."""
        if self._done or self._exc is not None:
            return
        self._left = True
        self._chunks = []
        self._buffered = 0
        conn = self._conn
        if conn is not None and conn.read_paused:
            conn.resume_reading()
        at = self._loop.time() + grace
        if at < self._total_at:
            self._total_at = at
            timer = self._timer
            if timer is not None:
                timer.cancel()
                at = min(at, timer.when())
            self._timer = self._loop.call_at(at, self._on_timer)

    def close(self) -> None:
        """Close the connection now (a client that went away must stop the upstream at once)."""
        if not self._done and self._exc is None:
            self._fail(ConnectionClosed(f"the response from {self._what} was closed before its end"))

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.release()

    # -- driven by the connection and the client --------------------------------------------------

    def _wait(self, phase: str) -> asyncio.Future[None]:
        """A future resolved on progress or failure (left in ``_exc``); while it is pending the upstream
        is what we wait on, so the timer counts the silence."""
        w = self._waiter = self._loop.create_future()
        self._phase = phase
        if self._read is not None:
            self._last_io = self._loop.time()
        return w

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    def _arm(self) -> None:
        """Start the one timer of this request (total, deadline and silence)."""
        when = self._total_at
        if self._read is not None:
            self._last_io = now = self._loop.time()
            when = min(when, now + self._read)
        if when != INF:
            self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._done or self._exc is not None:
            return
        now = self._loop.time()
        if now >= self._total_at:
            self._fail(TimedOut("total", f"the request to {self._what} ran out of time"))
            return
        when = self._total_at
        if self._read is not None:
            w = self._waiter
            waiting = w is not None and not w.done()
            if waiting and now - self._last_io >= self._read - 0.001:
                phase = self._phase
                what = "sent nothing" if phase == "read" else "took no more of the request body"
                self._fail(TimedOut(phase, f"{self._what} {what} for {self._read:g} s"))
                return
            when = min(when, (self._last_io if waiting else now) + self._read)
        self._timer = self._loop.call_at(when, self._on_timer)

    def _finish(self) -> None:
        """The body is complete: the response no longer needs its connection."""
        self._done = True
        self._conn = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        """End the response with ``exc`` (raised to whoever reads next); the connection is closed."""
        if self._done or self._exc is not None:
            return
        self._exc = exc
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        conn = self._conn
        self._conn = None
        if conn is not None:
            conn.abort()
        self._wake()
