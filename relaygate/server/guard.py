"""What uvicorn's httptools protocol does not bound: header sizes, slow or idle clients, connection count.

``GuardedProtocol`` is uvicorn's ``HttpToolsProtocol`` with a phase per connection (idle, reading the head,
reading the body, answering, closing) and the limits of ``server:`` checked on the way; the ``Watchdog``, one
per server, sweeps the connections a few times a second with a coarse clock, so the request path pays a few
attribute stores and no timer. A refused connection gets an OpenAI-format error with ``connection: close``
and a lingering close (its unread input is drained for a moment, so the answer is not lost to a reset).

Some of ``HttpToolsProtocol``'s methods are replaced whole rather than extended (one Python frame less per
request on the hot path); they follow uvicorn ``TESTED_UVICORN`` (``requirements.lock`` pins it, and
``tests/test_server_limits.py`` fails when the lock moves, so a new uvicorn gets a fresh look).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import time
import urllib.parse
from collections import Counter
from typing import Any, ClassVar

import httptools
import orjson
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from relaygate.config import ServerConfig
from relaygate.core.call import header_pairs
from relaygate.core.errors import BadRequest, GatewayError, HeadTooLarge, RequestTimeout, ServerBusy
from relaygate.server.http import BODY_TIMEOUT, HEAD_LINES

log = logging.getLogger("relaygate.server")

TESTED_UVICORN = "0.54.0"

# connection phases
IDLE, HEAD, BODY, BUSY, CLOSING = range(5)

FD_RESERVE = 128  # descriptors kept for the gateway's own use: database, Redis, log files, the event loop
LINGER = 1.0  # seconds a refused connection's input is drained before it is closed
LINGER_ROOM = FD_RESERVE // 2  # refused connections over the cap that may linger at once
LOG_PER_SECOND = 10  # refusals logged one by one per second; the rest are counted in a summary line


def default_max_connections() -> int:
    """Client connections that fit the open-file limit with an upstream socket each and room to spare."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, (soft - FD_RESERVE) // 2)


class Watchdog:
    """The limits, a coarse clock (``now``, monotonic, refreshed by the sweep) and the refusal log."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.header_timeout = cfg.header_timeout
        self.body_timeout = cfg.body_timeout
        self.request_timeout = cfg.request_timeout
        self.keepalive_timeout = cfg.keepalive_timeout
        self.max_connections = cfg.max_connections or default_max_connections()
        self.max_header_bytes = cfg.max_header_bytes
        self.max_header_line = cfg.max_header_line_bytes
        self.max_headers = cfg.max_headers
        # the sweep runs often enough that no timeout is overshot by more than a quarter
        self.interval = min(1.0, max(0.05, min(self.header_timeout, self.body_timeout,
                                               self.keepalive_timeout) / 4))
        self.now = time.monotonic()
        self._logged = 0
        self._unlogged: Counter[str] = Counter()
        self._window = self.now
        self._fds_logged = 0.0
        self.refusals: Counter[str] = Counter()  # every refusal by reason, since start

    def refused(self, reason: str, client: tuple[str, int] | None, detail: str) -> None:
        """Log one refusal (a few per second one by one; the sweep sums up the rest)."""
        self.refusals[reason] += 1
        if self._logged < LOG_PER_SECOND:
            self._logged += 1
            who = f"{client[0]}:{client[1]}" if client else "a client"
            log.warning("%s: %s (%s)", reason, who, detail)
        else:
            self._unlogged[reason] += 1

    async def run(self, connections: set[Any]) -> None:
        """Sweep ``connections`` until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            self.sweep(connections)

    def sweep(self, connections: set[Any]) -> None:
        now = self.now = time.monotonic()
        for conn in list(connections):
            if isinstance(conn, GuardedProtocol):
                conn.check(now)
        if now - self._window >= 1.0:
            for reason, n in self._unlogged.items():
                log.warning("%s: %d more in the last %.0f s", reason, n, now - self._window)
            self._unlogged.clear()
            self._logged = 0
            self._window = now
            self._check_fds(now)

    def _check_fds(self, now: float) -> None:
        """Out of file descriptors, the event loop drops new connections without a word: say so."""
        try:
            fd = os.open(os.devnull, os.O_RDONLY)
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE) and now - self._fds_logged >= 10:
                self._fds_logged = now
                soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
                log.error("out of file descriptors (open-file limit %d): new connections are dropped and "
                          "upstream connections fail; lower server.max_connections (%d) or raise the limit",
                          soft, self.max_connections)
        else:
            os.close(fd)


# the bytes uvicorn's HEADER_RE and HEADER_VALUE_RE refuse in a response header's name and value
_NAME_OK = bytes(c for c in range(256) if c > 0x1F and c != 0x7F and chr(c) not in '()<>@,;:[]={} \t\\"')
_VALUE_OK = bytes(c for c in range(256) if c == 0x09 or (c > 0x1F and c != 0x7F))


# what this server adds to ASGI (shared by every request's scope, never changed): header lines in wire form
# (server/http.py HEAD_LINES)
_EXTENSIONS: dict[str, dict[object, object]] = {HEAD_LINES: {}}


class GuardedCycle(RequestResponseCycle):
    """uvicorn's request-response cycle with the response head checked as a whole: its regular expressions,
    searched per header name and value, cost ~20k instructions for the nine headers of a chat answer; one
    ``bytes.translate`` over all names and one over all values refuse exactly the same bytes for a fraction.
    Otherwise the head is written as uvicorn writes it (``send`` as of uvicorn TESTED_UVICORN)."""

    async def send(self, message: Any) -> None:
        if self.response_started or self.disconnected or self.flow.write_paused:
            lines = message.get(HEAD_LINES)
            if lines:  # uvicorn's send writes the head: the lines as pairs
                message = {**message, "headers": [*message.get("headers", []), *header_pairs(lines)]}
            return await super().send(message)
        if message["type"] != "http.response.start":
            raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{message['type']}'.")
        self.response_started = True
        self.waiting_for_100_continue = False
        status_code = message["status"]
        headers = self.default_headers + list(message.get("headers", []))
        if self.access_log:
            self.access_logger.info('%s - "%s %s HTTP/%s" %d', get_client_addr(self.scope), self.scope["method"],
                                    get_path_with_query_string(self.scope), self.scope["http_version"], status_code)
        if b"".join([n for n, _ in headers]).translate(None, _NAME_OK):
            raise RuntimeError("Invalid HTTP header name.")
        if b"".join([v for _, v in headers]).translate(None, _VALUE_OK):
            raise RuntimeError("Invalid HTTP header value.")
        content = [STATUS_LINE[status_code]]
        has_connection_close = False
        for name, value in headers:
            name = name.lower()
            if name == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif name == b"connection":
                if b"close" in [token.lower().strip() for token in value.split(b",")]:
                    self.keep_alive = False
                    has_connection_close = True
            content.extend([name, b": ", value, b"\r\n"])
        lines = message.get(HEAD_LINES)
        if lines:  # already in wire form, and fine by construction (Reply.raw_headers): written as they are
            content.append(lines)
        if not self.keep_alive and not has_connection_close:
            content.append(b"connection: close\r\n")
        if self.chunked_encoding is None and self.scope["method"] != "HEAD" and status_code not in (204, 304):
            self.chunked_encoding = True
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        self.transport.write(b"".join(content))
        return None


def _answer(err: GatewayError) -> bytes:
    """A whole HTTP/1.1 response carrying ``err`` in OpenAI's format, closing the connection."""
    body = orjson.dumps(err.body())
    extra = b"".join(k.encode("latin-1") + b": " + v.encode("latin-1") + b"\r\n" for k, v in err.headers.items())
    return (STATUS_LINE[err.status] + b"content-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\nconnection: close\r\n" + extra + b"\r\n" + body)


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header limits, read timeouts and a connection cap."""

    watchdog: ClassVar[Watchdog]  # set on the subclass each server makes (``protocol_class``)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.phase = HEAD  # a new connection owes its first request's head within header_timeout
        self.since = self.watchdog.now  # when the phase began (the body's last bytes, while in BODY)
        self.draining = False  # the server stops: the next request is answered with connection: close
        self.drain_began = 0.0  # when (monotonic)
        self.body_started = 0.0
        self.head_bytes = 0  # bytes of a head still incomplete after a read (a bound on what the parser buffers)
        self.max_line = self.watchdog.max_header_line  # here for the per-header check: one attribute lookup
        self.stalled = 0.0  # since when none of our answer was read (0: the client reads, or all is sent)
        self.unsent = 0  # bytes of our answer not yet sent, at the last sweep
        self.refusal: GatewayError | None = None  # the limit a parser callback hit
        self.close_on_input = False  # refused before its request came: close once it comes

    def drain(self, began: float) -> None:
        """The server stops (at ``began``, monotonic). A busy connection closes once its answer is sent; every
        later request on this one is answered with ``connection: close``. An idle one is not closed at once: a
        proxy that keeps connections alive may be sending a request on it right now, and closing it would fail
        that request (nginx: 502 "upstream prematurely closed connection"; it does not resend a POST). The
        server closes it once it stayed idle for ``server.drain_idle_grace`` (``close_if_idle``)."""
        self.draining = True
        self.drain_began = began
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False

    def idle_until(self, grace: float) -> float | None:
        """While draining: when this connection, idle, is to be closed (monotonic); None while a request is
        under way (or begun: part of a head came) or the connection already closes. Its idleness counts from
        the drain's start or its last answer, whichever is later (``since`` is the coarse clock's, never
        ahead of the true time)."""
        phase = self.phase
        if phase == IDLE or (phase == HEAD and not self.head_bytes):
            return max(self.drain_began, self.since) + grace
        return None

    def close_idle(self) -> None:
        """Close an idle connection at the drain's end of grace: gracefully (what is still unsent of an
        answer a slow client reads is sent first; the slow-client check bounds that)."""
        self.phase = CLOSING
        self.since = self.watchdog.now
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        wd = self.watchdog
        self.since = wd.now
        open_now = len(self.connections)
        if open_now > wd.max_connections:
            # answered before the request is read; the connection closes once the request came, or at
            # once when so many refusals linger that their descriptors would run out
            self.close_on_input = True
            self.refuse(ServerBusy(f"the gateway is at its limit of {wd.max_connections} connections; "
                                   "try again shortly", retry_after=1.0),
                        "connection cap", f"{open_now - 1} open, server.max_connections {wd.max_connections}",
                        linger=open_now <= wd.max_connections + LINGER_ROOM)

    def eof_received(self) -> None:
        if self.phase == CLOSING:
            self.transport.close()

    # The hot path: uvicorn's data_received, on_message_begin, on_header, on_headers_complete, on_body,
    # on_message_complete and on_response_complete, with the limits added and the keep-alive timer left to the
    # sweep (uvicorn armed one per answer and cancelled it at the next read).

    def data_received(self, data: bytes) -> None:
        if self.phase == CLOSING:  # the input of a refused request is read and dropped
            if self.close_on_input:
                self.transport.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:  # a parser callback's error too: one of our limits, or a bad request
            refusal = self.refusal
            if refusal is not None:
                self.refuse(refusal, "oversized request head", refusal.message)
            else:
                self.refuse(BadRequest("invalid HTTP request"), "invalid HTTP request", "unparsable")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self.phase == HEAD:  # a head still incomplete (rare: most arrive whole): bound what it buffers
            self.head_bytes += len(data)
            if self.head_bytes > self.watchdog.max_header_bytes:
                self.refuse(HeadTooLarge(f"the request head exceeds {self.watchdog.max_header_bytes} bytes"),
                            "oversized request head", f"over {self.watchdog.max_header_bytes} bytes")

    def _unsupported_upgrade_warning(self) -> None:
        """A client's ``Upgrade: websocket``: the gateway serves no websockets (uvicorn runs with ws=none), so
        the request is answered as plain HTTP, without uvicorn's warnings (a client could fill the log)."""

    def on_message_begin(self) -> None:
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.scope = {  # type: ignore[typeddict-item]
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,  # type: ignore[typeddict-item]
            "root_path": self.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
            "extensions": _EXTENSIONS,
        }
        self.phase = HEAD
        self.since = self.watchdog.now

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(value) > self.max_line or len(name) > self.max_line:
            self.refusal = self._head_too_large()
            raise self.refusal
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def _head_too_large(self) -> HeadTooLarge:
        wd = self.watchdog
        return HeadTooLarge(f"request headers too large: at most {wd.max_headers} headers of {wd.max_header_line} "
                            f"bytes each, {wd.max_header_bytes} bytes in all")

    def on_headers_complete(self) -> None:
        # the count and the URL are checked once the head is whole (a head split over reads is bounded by
        # data_received meanwhile)
        if len(self.headers) > self.watchdog.max_headers:
            self.refusal = self._head_too_large()
            raise self.refusal
        if len(self.url) > self.max_line:
            self.refusal = GatewayError(f"the request URL exceeds {self.max_line} bytes", status=414,
                                        code="uri_too_long")
            raise self.refusal
        self.phase = BODY
        self.since = self.body_started = self.watchdog.now
        self.head_bytes = 0
        http_version = self.parser.get_http_version()
        method = self.parser.get_method()
        self.scope["method"] = method.decode("ascii")
        if http_version != "1.1":
            self.scope["http_version"] = http_version
        if self.parser.should_upgrade() and self._should_upgrade():
            return
        parsed_url = httptools.parse_url(self.url)
        raw_path = parsed_url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        self.scope["path"] = self.root_path + path
        self.scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        self.scope["query_string"] = parsed_url.query or b""
        existing_cycle = self.cycle
        self.cycle = GuardedCycle(
            scope=self.scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=self.expect_100_continue,
            keep_alive=http_version != "1.0" and self.parser.should_keep_alive() and not self.draining,
            on_response=self.on_response_complete,
        )
        if existing_cycle is None or existing_cycle.response_complete:
            self._start_asgi_task(self.cycle, self.app)
        else:  # pipelined: queued until the answer before it is sent
            self.flow.pause_reading()
            self.pipeline.appendleft((self.cycle, self.app))

    def on_body(self, body: bytes) -> None:
        self.since = self.watchdog.now
        if (self.parser.should_upgrade() and self._should_upgrade()) or self.cycle.response_complete:
            return
        self.cycle.body += body
        if len(self.cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        self.cycle.message_event.set()

    def on_message_complete(self) -> None:
        if (self.parser.should_upgrade() and self._should_upgrade()) or self.cycle.response_complete:
            if self.phase == BODY:  # the rest of a body the answer did not wait for: now idle
                self.phase = IDLE
                self.since = self.watchdog.now
            return
        self.phase = BUSY
        self.cycle.more_body = False
        self.cycle.message_event.set()

    def on_response_complete(self) -> None:
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self.phase != BODY:  # (in BODY the client still sends a body the answer did not wait for)
            self.phase = IDLE
            self.since = self.watchdog.now

    # refusals and timeouts

    def refuse(self, err: GatewayError, reason: str, detail: str, linger: bool = True) -> None:
        """Answer ``err`` (unless an answer already started) and close the connection: after draining its
        input for a moment (``linger``: the client reads the answer instead of a reset), or at once."""
        self.watchdog.refused(reason, self.client, detail)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if self.phase != BODY or cycle.response_started:  # an answer is (or may be) under way: just cut
                self.cut()
                return
            # the app is reading the body: it learns of the cut as a disconnect
            cycle.disconnected = True
            cycle.message_event.set()
        self.phase = CLOSING
        self.since = self.watchdog.now
        if self.transport.is_closing():
            return
        self.transport.write(_answer(err))
        if not linger:
            self.transport.close()
            return
        try:
            self.transport.write_eof()
        except (NotImplementedError, OSError, RuntimeError):
            self.transport.close()

    def check(self, now: float) -> None:
        """The sweep's look at this connection: cut it when its client is too slow or idle too long."""
        wd = self.watchdog
        unsent = self.transport.get_write_buffer_size()
        if unsent and unsent >= self.unsent:  # none of our answer was read since the last look
            if not self.stalled:
                self.stalled = now
            elif now - self.stalled > wd.body_timeout:
                wd.refused("slow client", self.client, f"left its answer unread for {wd.body_timeout:g} s")
                self.cut()
                return
        else:
            self.stalled = 0.0
        self.unsent = unsent
        phase = self.phase
        if phase == IDLE:
            if now - self.since > wd.keepalive_timeout and not unsent:  # (a slow reader still reads)
                self.cut()
        elif phase == HEAD:
            if now - self.since > wd.header_timeout:
                self.refuse(RequestTimeout(f"the request head did not arrive within {wd.header_timeout:g} s"),
                            "slow client", f"request head incomplete after {wd.header_timeout:g} s")
        elif phase == BODY:
            if self.flow.read_paused:  # our own back-pressure, not the client's silence
                self.since = now
            elif now - self.since > wd.body_timeout or now - self.body_started > wd.request_timeout:
                if self.cycle.response_complete:  # answered already: no one waits for the rest
                    self.cut()
                    return
                self.scope[BODY_TIMEOUT] = True  # type: ignore[literal-required]
                self.refuse(RequestTimeout(f"the request body stalled for {wd.body_timeout:g} s or did not "
                                           f"arrive within {wd.request_timeout:g} s"),
                            "slow client", "request body stalled")
        elif phase == CLOSING and now - self.since > LINGER:
            self.cut()

    def cut(self) -> None:
        """Close now; drop what is still unsent (a close would wait for a client that does not read)."""
        self.phase = CLOSING
        if self.transport.get_write_buffer_size():
            self.transport.abort()
        else:
            self.transport.close()


def protocol_class(watchdog: Watchdog) -> type[GuardedProtocol]:
    """A ``GuardedProtocol`` bound to one server's watchdog (uvicorn builds protocols from a class)."""
    return type("GuardedProtocol", (GuardedProtocol,), {"watchdog": watchdog})
