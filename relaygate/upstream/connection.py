"""One keep-alive HTTP/1.1 connection: an asyncio protocol feeding httptools' strict response parser."""

from __future__ import annotations

import asyncio
import select
from typing import TYPE_CHECKING

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpResponseParser

from relaygate.upstream.errors import ConnectionClosed, ProtocolError
from relaygate.upstream.http11 import decode_headers

if TYPE_CHECKING:
    from relaygate.upstream.pool import Pool
    from relaygate.upstream.response import Response


class _Stop(Exception):
    """Raised from a parser callback to stop parsing; the reason is left on the connection."""


class Connection(asyncio.Protocol):
    """Carries one request at a time. The pool owns it while idle, a ``Response`` while in use.

    The parser is never given lenient flags. Bytes that arrive while no response is expected (after a
    complete one, or while idle) mean the connection is out of step: it is closed, never reused.
    """

    __slots__ = ("pool", "loop", "transport", "parser", "resp", "lost", "reused", "idle_since", "keep",
                 "read_paused", "write_paused", "head_bytes", "trailer_bytes", "raw", "complete", "stop",
                 "discarded", "max_head", "read_buffer")

    def __init__(self, pool: Pool, loop: asyncio.AbstractEventLoop, max_head: int, read_buffer: int) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made
        self.parser = HttpResponseParser(self)
        self.resp: Response | None = None
        self.lost = False
        self.reused = False
        self.idle_since = 0.0
        self.keep = True  # fit for another request once this one is done
        self.read_paused = False
        self.write_paused = False
        self.head_bytes = 0
        self.trailer_bytes = 0
        self.raw: list[tuple[bytes, bytes]] = []
        self.complete = False
        self.stop: BaseException | None = None  # why a callback stopped the parser (None: the response is whole)
        self.discarded = False
        self.max_head = max_head
        self.read_buffer = read_buffer

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        resp = self.resp
        if resp is None:  # nothing was asked: the upstream is out of step with us
            self.abort()
            return
        if resp._read is not None:
            resp._last_io = self.loop.time()
        if not resp.status:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade) as e:
            self._parse_failed(e)
            return
        if self.complete:
            self._message_done()
        elif not resp.status and self.head_bytes > self.max_head:
            resp._fail(ProtocolError(f"the response headers from {resp._what} exceed {self.max_head} bytes"))

    def eof_received(self) -> bool | None:
        return None  # close our side too: a half-closed upstream sends no more of a response

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        resp = self.resp
        if resp is None:
            self.pool.discard(self)
            return
        if resp.status and not self.complete and exc is None and _until_eof(resp):
            self.keep = False
            self.complete = True
            self._message_done()
            return
        why = f" ({type(exc).__name__})" if exc is not None else ""
        if resp.status:
            msg = f"{resp._what} closed the connection in the middle of the response body{why}"
        else:
            msg = f"{resp._what} closed the connection before the response{why}"
        resp._fail(ConnectionClosed(msg))
        self.pool.discard(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        resp = self.resp
        if resp is not None:
            if resp._read is not None:
                resp._last_io = self.loop.time()
            resp._wake()

    # -- parser callbacks (httptools) ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:  # a second response in the same bytes: not ours to read
            raise _Stop
        self.raw = []

    def on_header(self, name: bytes, value: bytes) -> None:
        resp = self.resp
        assert resp is not None
        if resp.status:  # a trailer: bounded, then dropped
            self.trailer_bytes += len(name) + len(value)
            if self.trailer_bytes > self.max_head:
                self.stop = ProtocolError(f"the response trailers from {resp._what} exceed {self.max_head} bytes")
                raise _Stop
            return
        self.raw.append((name, value))

    def on_headers_complete(self) -> None:
        resp = self.resp
        assert resp is not None
        status = self.parser.get_status_code()
        if status < 200:
            if status == 101:
                self.stop = ProtocolError(f"{resp._what} switched protocols, which was not asked for")
                raise _Stop
            self.raw = []  # an interim response (103 Early Hints…): its message completes without a body
            return
        resp.raw_headers = raw = self.raw
        resp.headers = decode_headers(raw)
        resp.status = status
        if resp.head_only:  # llhttp cannot be told the request was HEAD: stop it before it looks for a body
            self.stop = None
            self.complete = True
            self.keep = False
            raise _Stop
        resp._wake()

    def on_body(self, body: bytes) -> None:
        resp = self.resp
        assert resp is not None
        resp._chunks.append(body)
        resp._buffered += len(body)
        if resp._buffered > self.read_buffer and not resp._read_all and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()
        w = resp._waiter
        if w is not None:
            resp._waiter = None
            if not w.done():
                w.set_result(None)

    def on_message_complete(self) -> None:
        resp = self.resp
        if resp is None or not resp.status:
            return  # the end of an interim response
        if not self.parser.should_keep_alive():
            self.keep = False
        self.complete = True

    # -- used by the response, the pool and the client ----------------------------------------------

    def _parse_failed(self, e: Exception) -> None:
        resp = self.resp
        assert resp is not None
        if self.complete and self.stop is None:  # the response is whole; what followed it is not ours
            self.keep = False
            self._message_done()
            return
        cause = e.__context__
        if isinstance(e, HttpParserCallbackError) and cause is not None and not isinstance(cause, _Stop):
            resp._fail(cause)  # a bug of ours in a callback: surfaced as itself, not blamed on the upstream
            return
        resp._fail(self.stop or ProtocolError(f"invalid HTTP response from {resp._what}: {_reason(e)}"))

    def _message_done(self) -> None:
        resp = self.resp
        assert resp is not None
        self.resp = None
        self.complete = False
        self.head_bytes = self.trailer_bytes = 0
        resp._finish()
        if self.keep and resp._sent_all and not self.lost:
            if self.read_paused:
                self.read_paused = False
                self.transport.resume_reading()
            self.pool.put(self)
        else:
            self.close()

    def send(self, resp: Response, data: bytes) -> bool:
        """Write the start of a request; False when provably nothing of it left (the socket was dead)."""
        t = self.transport
        if self.lost or t.is_closing():
            return False
        self.resp = resp
        resp._conn = self
        t.write(data)
        if t.is_closing():  # the send failed at once: an empty buffer was written into, so no byte left
            self.resp = None
            resp._conn = None
            self.abort()
            return False
        return True

    def resume_reading(self) -> None:
        self.read_paused = False
        if not self.lost:
            self.transport.resume_reading()

    def peer_closed(self) -> bool:
        """Whether an idle connection has something to read: the upstream's close (or bytes out of step)."""
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return False
        try:
            readable, _, _ = select.select([sock.fileno()], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def close(self) -> None:
        """Close gracefully (a TLS close_notify is sent) and leave the pool."""
        self.keep = False
        if not self.lost:
            self.transport.close()
        self.pool.discard(self)

    def abort(self) -> None:
        """Drop the connection now, unsent bytes included, and leave the pool."""
        self.keep = False
        resp = self.resp
        if resp is not None:
            self.resp = None
            if resp._conn is self:
                resp._conn = None
        if not self.lost and self.transport is not None:
            self.transport.abort()
        self.pool.discard(self)


def _until_eof(resp: Response) -> bool:
    """A body that ends when the connection does: neither chunked nor of a declared length."""
    if resp.head_only or resp.status in (204, 304):
        return False
    te = resp.headers.get("transfer-encoding")
    if te is not None and te.rstrip().lower().endswith("chunked"):
        return False
    return "content-length" not in resp.headers


def _reason(e: Exception) -> str:
    if isinstance(e, HttpParserUpgrade):
        return "an unexpected protocol upgrade"
    return str(e) or type(e).__name__
