"""Upstream streams, read once and right: the server-sent events decoder, the body reader that maps its
failures to gateway errors, the wait for a stream's first event, the wrapper that closes the upstream when a
reply stream ends, and SSE framing.

A streamed reply is returned only once its upstream produced a first event (``peek``): until then a failure
is an ordinary gateway error that a fallback can still serve. After that, the reply stream is wrapped by
``closing``, which closes the upstream response (releasing it to the pool only when its body was read to the
end): a client that goes away stops the upstream generation at once.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Any, TypeVar

import orjson

from relaygate.core.aiter import aclose
from relaygate.core.errors import GatewayError, Unavailable, UpstreamTimeout
from relaygate.upstream import Response, UpstreamError

T = TypeVar("T")

SSE_DONE = b"data: [DONE]\n\n"  # the end of an OpenAI stream
_BOM = b"\xef\xbb\xbf"


def sse(data: Any, event: bytes = b"") -> bytes:
    """One event carrying the JSON of ``data`` (JSON has no raw line breaks to split), named if ``event``."""
    if event:
        return b"event: " + event + b"\ndata: " + orjson.dumps(data) + b"\n\n"
    return b"data: " + orjson.dumps(data) + b"\n\n"


def sse_frame(data: bytes, event: bytes = b"") -> bytes:
    """One event of any data, named when ``event`` is given; a multi-line ``data`` takes one field a line."""
    if data.find(b"\n") >= 0 or data.find(b"\r") >= 0:  # find: ``in`` on bytes builds and drops a TypeError
        data = b"\ndata: ".join(data.splitlines())
    head = b"event: " + event + b"\ndata: " if event else b"data: "
    return head + data + b"\n\n"


def stream_error_event(err: GatewayError) -> bytes:
    """The event that ends a stream that failed after its first byte (OpenAI's in-stream error shape)."""
    return sse(err.body())


class SSEDecoder:
    """Server-sent events from bytes as they arrive, by the WHATWG event-stream rules, in time linear in the
    bytes (each byte is looked at a bounded number of times, however the body is split into reads).

    Lines end in LF, CR or CRLF (a CRLF may be split between two reads); a leading BOM is dropped; lines
    starting with ``:`` are comments; ``data`` lines of one event are joined with LF; a field without a colon
    has an empty value; one space after the colon is not part of the value. ``feed`` returns the events a read
    completed, as ``(event type, data)`` (type ``message`` when the event named none); events without data
    are not dispatched. ``id`` and ``retry`` update ``last_event_id`` and ``retry`` (milliseconds).
    """

    __slots__ = ("_tail", "_cr", "_start", "_event", "_data", "last_event_id", "retry")

    def __init__(self) -> None:
        self._tail: list[bytes] = []  # the pieces of a line not yet ended (a line may span many reads)
        self._cr = False  # the last read ended in CR: an LF starting the next read ends no second line
        self._start: bytes | None = b""  # the body's first bytes while fewer than a BOM's length came
        self._event = b""
        self._data: list[bytes] = []
        self.last_event_id = ""
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        """The events completed by this read."""
        if self._start is not None:
            chunk = self._drop_bom(self._start, chunk)
        if self._cr:
            self._cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if not chunk:
            return []
        last = chunk[-1]
        lines = chunk.splitlines()  # bytes split on LF, CR and CRLF only
        if last == 13:
            self._cr = True
        elif last != 10:  # the last line goes on in a later read
            piece = lines.pop()
            if not lines:
                self._tail.append(piece)
                return []
            if self._tail:
                lines[0] = b"".join(self._tail) + lines[0]
            self._tail = [piece]
            return self._lines(lines)
        if self._tail:
            self._tail.append(lines[0])
            lines[0] = b"".join(self._tail)
            self._tail = []
        return self._lines(lines)

    def end(self) -> list[tuple[str, bytes]]:
        """The events left when the body ended.

        Unlike a browser, which drops an event not closed by a blank line, this dispatches it: some upstreams
        leave the last blank line out, and a truncated event still fails when its data is parsed."""
        lines = [b"".join(self._tail)] if self._tail else []
        self._tail = []
        lines.append(b"")
        return self._lines(lines)

    def _drop_bom(self, start: bytes, chunk: bytes) -> bytes:
        head = start + chunk
        if len(head) < len(_BOM) and _BOM.startswith(head):
            self._start = head  # could still be a BOM split between reads
            return b""
        self._start = None  # decided: no BOM checks from now on
        return head[len(_BOM):] if head.startswith(_BOM) else head

    def _lines(self, lines: list[bytes]) -> list[tuple[str, bytes]]:
        events: list[tuple[str, bytes]] = []
        data = self._data
        for line in lines:
            if not line:  # a blank line dispatches the event
                if data:
                    events.append((self._event.decode("utf-8", "replace") if self._event else "message",
                                   data[0] if len(data) == 1 else b"\n".join(data)))
                    data = self._data = []
                self._event = b""
            elif line.startswith(b"data: "):  # the common case first
                data.append(line[6:])
            elif line.startswith(b"data:"):
                data.append(line[5:])
            elif line[0] != 58:  # not a ":" comment
                self._field(line)
        return events

    def _field(self, line: bytes) -> None:
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":  # "data" alone
            self._data.append(value)
        elif name == b"event":
            self._event = value
        elif name == b"id":
            if b"\0" not in value:
                self.last_event_id = value.decode("utf-8", "replace")
        elif name == b"retry":
            if value.isdigit():  # ASCII digits only, as the spec wants
                self.retry = int(value)
        # any other field is ignored


class EventCutter:
    """Cuts SSE bytes after their last complete event, without decoding them: how a pass-through forwards a
    stream whole events at a time with the least work. Reads framed with CR or CRLF (a CRLF may be split
    between reads) are re-framed to LF, so that an event ends where ``\n\n`` is.

    ``idle`` is true while nothing is held back: a read ending in ``\n\n`` is then whole events, to be
    forwarded as it is (what ``feed`` does first; a hot loop may test it without the call)."""

    __slots__ = ("_held", "_cr", "idle")

    def __init__(self) -> None:
        self._held: list[bytes] = []  # the start of an event not yet complete
        self._cr = False  # the last read ended in CR
        self.idle = True  # nothing held, no CR pending

    def feed(self, chunk: bytes) -> bytes:
        """The events this read completed (with any held back before), b"" when none."""
        if self.idle and chunk.endswith(b"\n\n"):
            return chunk  # a read of whole events; any "\n\n" ends an event, whatever the framing before it
        if self._cr or chunk.find(b"\r") >= 0:  # a raw CR is always a line end: JSON escapes it
            if self._cr and chunk[:1] == b"\n":
                chunk = chunk[1:]
            self._cr = chunk[-1:] == b"\r"
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        held = self._held
        end = chunk.rfind(b"\n\n")
        if end >= 0:
            end += 2
        elif held and chunk[:1] == b"\n" and held[-1][-1:] == b"\n":
            end = 1  # the blank line began in the last read
        else:
            if chunk:
                held.append(chunk)
            self.idle = not held and not self._cr
            return b""
        if held:
            held.append(chunk[:end])
            events = b"".join(held)
            held.clear()
        else:
            events = chunk[:end]
        if end < len(chunk):
            held.append(chunk[end:])
        self.idle = not held and not self._cr
        return events

    def end(self) -> bytes:
        """What is left when the body ended: a last event not closed by a blank line, closed."""
        tail = b"".join(self._held)
        self._held.clear()
        self.idle = True
        if not tail.strip():
            return b""
        return tail + (b"\n" if tail.endswith(b"\n") else b"\n\n")


LEAVE_GRACE = 5.0  # seconds a connection left after a stream's last event has to end its body and be pooled


class UpstreamBody:
    """An upstream response's body as it arrives, chunk by chunk. A timeout or a broken connection while
    reading becomes a gateway error; ``close`` releases the connection to the pool only when the body was
    read to its end, and otherwise closes it so that the upstream stops at once."""

    __slots__ = ("resp", "kind", "complete", "started", "_read")

    def __init__(self, resp: Response, kind: str) -> None:
        self.resp = resp
        self.kind = kind
        self.complete = False  # read to the end
        self.started = False  # some bytes came (for error messages)
        self._read = resp.__anext__

    def __aiter__(self) -> UpstreamBody:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._read()
        except StopAsyncIteration:
            self.complete = True
            raise
        except TimeoutError:
            when = "stream timed out" if self.started else "timed out before the first byte"
            raise UpstreamTimeout(f"upstream {self.kind} {when}") from None
        except UpstreamError as e:
            when = "stream broke" if self.started else "failed before the first byte"
            raise Unavailable(f"upstream {self.kind} {when} ({type(e).__name__})", status=502) from None
        self.started = True
        return chunk

    def leave(self) -> None:
        """The reader has the stream's last event (``[DONE]``, ``message_stop``) and stops reading. Waiting
        for the body's end would hold the reply open after the client had all of it (a client that hangs up
        then would be logged as gone); the connection reads that end by itself and is pooled then."""
        self.complete = True
        self.resp.leave(LEAVE_GRACE)

    def close(self) -> None:
        if not self.complete:  # a complete body's connection is pooled already, or will be once left
            self.resp.close()


async def sse_events(body: UpstreamBody, last: str | None = None) -> AsyncIterator[tuple[str, bytes]]:
    """The body's server-sent events, ``(event type, data)``, each as soon as its read arrived, up to the
    event of type ``last`` (Anthropic's ``message_stop``) when one is named: the body is left then, before the
    event goes on (``UpstreamBody.leave``), since a reader may stop at what is made of it, and its connection
    is then pooled rather than closed."""
    decoder = SSEDecoder()
    async for chunk in body:
        for event in decoder.feed(chunk):
            if event[0] == last:
                body.leave()
                yield event
                return
            yield event
    for event in decoder.end():
        yield event


async def peek(body: UpstreamBody, first: Awaitable[T | None], what: str = "its first event") -> T:
    """Wait for a stream's first item (``None``: the stream ended first) before the reply is returned.

    Any failure until then, including an empty stream, raises here with the upstream closed, while a fallback
    can still serve the call."""
    try:
        item = await first
    except BaseException:
        body.close()
        raise
    if item is None:
        body.close()
        raise Unavailable(f"upstream {body.kind} ended the stream before {what}", status=502)
    return item


async def closing(
        body: UpstreamBody, stream: AsyncIterator[T], first: T | None = None) -> AsyncGenerator[T, None]:
    """``stream`` (made from ``body``; after ``first`` when given) as a reply stream. However it ends (done,
    failed, or its reader gone), the upstream is closed then, released only when its body was read whole."""
    try:
        if first:
            yield first
        async for piece in stream:
            yield piece
        body.leave()  # the translator ended by itself: the body ended, or it had the stream's last event
    finally:
        try:
            await aclose(stream)  # a translator stops now, not when collected
        finally:
            body.close()


async def open_body(resp: Response, kind: str, *, require_bytes: bool = False) -> AsyncIterator[bytes]:
    """The response body as it arrives, after waiting for its first bytes (an empty body is an error when
    ``require_bytes``); later chunks are forwarded as they come, never buffered whole."""
    body = UpstreamBody(resp, kind)
    first = await peek(body, anext(body, None if require_bytes else b""), "its first byte")
    return closing(body, body, first)
