"""The gateway's upstream HTTP/1.1 client: pooled keep-alive connections, streamed bodies both ways.

It never sends a request twice by itself: the one retry it makes is on a reused connection found dead
before any byte of the request left (closed while idle, or a write that failed at once). Every other
retry is the router's, which knows whether the call may be paid twice.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterable, Mapping
from urllib.parse import urlsplit

from relaygate.upstream.connection import Connection
from relaygate.upstream.errors import ConnectFailed, ConnectionClosed, ProtocolError, TimedOut
from relaygate.upstream.http11 import (
    LAST_CHUNK,
    METHODS,
    EncodedHeaders,
    chunk,
    encode_head,
    method_bytes,
    request_line,
)
from relaygate.upstream.options import Limits, Timeouts
from relaygate.upstream.pool import Pool, Slots
from relaygate.upstream.proxy import Proxy, ProxySettings, open_tunnel
from relaygate.upstream.response import INF, Response

Body = bytes | bytearray | memoryview | AsyncIterable[bytes] | None
_DEFAULT_PORTS = {"http": 80, "https": 443}
_ROUTE_CACHE = 1024  # distinct URLs remembered (a deployment uses a handful)


class Client:
    """One per gateway (per event loop). ``request`` sends; the ``Response`` streams the answer back.

    TLS verifies the certificate and the host name (SNI) against the system store, or ``ca_file``,
    or the given ``ssl_context``. No compression is asked for.
    """

    def __init__(self, *, timeouts: Timeouts | None = None, limits: Limits | None = None,
                 proxies: ProxySettings | None = None, ca_file: str | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.timeouts = timeouts or Timeouts()
        self.limits = limits or Limits()
        self.proxies = proxies
        self._ca_file = ca_file
        self._ssl = ssl_context
        self._slots: Slots | None = None
        self._routes: dict[str, tuple[Pool, bytes, bytes, bytes]] = {}
        self._closed = False

    async def request(self, method: str, url: str, *, headers: Mapping[str, str] | EncodedHeaders | None = None,
                      data: Body = None, timeouts: Timeouts | None = None,
                      deadline: float | None = None) -> Response:
        """Send one request and return once the response's status and headers are in.

        ``headers``: a mapping, or ``EncodedHeaders`` made once for headers sent on every request.
        ``data``: bytes (sent with a content-length), or an async iterable of bytes, sent chunked unless
        ``headers`` has a content-length, which it must then match. ``deadline`` is a ``time.monotonic()``
        instant that bounds every phase, queueing for a slot included. Redirects are not followed. An
        exception raised by the body iterable propagates as it is; the rest are ``UpstreamError``s.
        """
        slots = self._slots
        if slots is None:
            slots = self._start()
        loop = slots.loop
        route = self._routes.get(url)
        if route is None:
            route = self._route(url)
        pool, line, host, extra = route
        if headers is not None and type(headers) is not EncodedHeaders:
            headers = EncodedHeaders(headers)  # type: ignore[arg-type]
        t = timeouts or self.timeouts
        now = loop.time()
        total_at = now + t.total if t.total is not None else INF
        if deadline is not None:
            total_at = min(total_at, now + deadline - time.monotonic())
        body: bytes = b""
        stream: AsyncIterable[bytes] | None = None
        length: int | None = None
        if data is None:
            pass
        elif isinstance(data, bytes):
            body = data
            length = len(body)
        elif isinstance(data, bytearray | memoryview):
            body = bytes(data)
            length = len(body)
        else:
            stream = data
            length = headers.length if headers is not None else None
        head = encode_head(METHODS.get(method) or method_bytes(method), line, host,
                           headers, extra, length, stream is not None and length is None)
        if len(body) < 65536:  # one write, one segment; a large body is written after the head instead
            head += body
            body = b""
        resp = Response(loop, pool.what, method == "HEAD", total_at, t.read)
        conn = pool.take(now)
        try:
            if conn is None:
                conn = await self._open(pool, t, total_at, min(now + self.limits.queue_timeout, total_at))
            if not conn.send(resp, head):
                if not conn.reused:
                    raise ConnectionClosed(f"{pool.what} closed the connection before the request",
                                           request_sent=False)
                # a reused connection was dead before a byte left: the one retry, on a new connection
                queue_until = min(loop.time() + self.limits.queue_timeout, total_at)
                conn = await self._open(pool, t, total_at, queue_until)
                if not conn.send(resp, head):
                    raise ConnectionClosed(f"{pool.what} closed the connection before the request",
                                           request_sent=False)
            if total_at != INF or t.read is not None:
                resp._arm()
            if body:
                conn.transport.write(body)
            if stream is not None:
                await self._upload(conn, resp, stream, length)
            else:
                resp._sent_all = True
            while not resp.status:
                if resp._exc is not None:
                    raise resp._exc
                await resp._wait("read")
        except BaseException:
            if resp._exc is None:
                resp.close()
            raise
        return resp

    @property
    def closed(self) -> bool:
        return self._closed

    def idle_connections(self) -> int:
        """Connections waiting in the pools for a next request (what a complete answer leaves behind)."""
        return sum(len(p.idle) for p in self._slots.pools.values()) if self._slots is not None else 0

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every connection; requests still queued fail."""
        self._closed = True
        if self._slots is not None:
            self._slots.close()
        await asyncio.sleep(0)  # let the transports run their close callbacks

    # -- internals ------------------------------------------------------------------------------------

    def _start(self) -> Slots:
        self._slots = Slots(asyncio.get_running_loop(), self.limits)
        return self._slots

    def _route(self, url: str) -> tuple[Pool, bytes, bytes, bytes]:
        """(pool, rest of the request line, host line, extra head lines) of a URL; remembered per URL."""
        if self._closed:
            raise ConnectFailed("the upstream client is closed")
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise ValueError(f"unsupported URL scheme {scheme!r} (http and https only)")
        if parts.username is not None or parts.password is not None:
            raise ValueError("credentials in an upstream URL are not sent: use a header")
        host = parts.hostname
        if not host:
            raise ValueError("the URL has no host")
        if not host.isascii():
            host = host.encode("idna").decode("ascii")
        default = _DEFAULT_PORTS[scheme]
        port = parts.port or default
        authority = f"[{host}]" if ":" in host else host
        host_header = authority if port == default else f"{authority}:{port}"
        proxy = self.proxies.select(scheme, host, port) if self.proxies is not None else None
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        extra = b""
        if proxy is not None and scheme == "http":  # forwarded: absolute-form, the proxy's credentials on it
            target = f"http://{host_header}{target}"
            if proxy.authorization:
                extra = f"proxy-authorization: {proxy.authorization}\r\n".encode("latin-1")
        slots = self._slots
        assert slots is not None
        key = (scheme, host, port, proxy)
        pool = slots.pools.get(key)
        if pool is None:
            pool = slots.pools[key] = Pool(slots, key, host, port, scheme == "https", proxy)
        if len(self._routes) >= _ROUTE_CACHE:
            self._routes.clear()
        route = self._routes[url] = (pool, request_line(target), f"host: {host_header}\r\n".encode("ascii"), extra)
        return route

    async def _open(self, pool: Pool, t: Timeouts, total_at: float, queue_until: float) -> Connection:
        """A connection when none is idle: a new one within the caps, or one handed over after queueing."""
        if self._closed:
            raise ConnectFailed("the upstream client is closed")
        slots = pool.slots
        if not slots.reserve(pool):
            got = await slots.wait(pool, queue_until)
            if got is not None:
                return got
        try:
            conn = await self._connect(pool, t, total_at)
        except BaseException:
            pool.open -= 1
            slots.release()
            raise
        pool.conns.add(conn)
        return conn

    async def _connect(self, pool: Pool, t: Timeouts, total_at: float) -> Connection:
        slots = pool.slots
        loop = slots.loop
        limits = self.limits
        conn = Connection(pool, loop, limits.max_head_bytes, limits.read_buffer)
        connect_at = loop.time() + t.connect if t.connect is not None else INF
        phase = "connect" if connect_at <= total_at else "total"
        until = min(connect_at, total_at)
        proxy: Proxy | None = pool.proxy  # type: ignore[assignment]
        try:
            async with asyncio.timeout_at(None if until == INF else until):
                if pool.tls and proxy is not None:
                    raw = await open_tunnel(loop, proxy, pool.host, pool.port, limits.max_head_bytes)
                    try:
                        tls = await loop.start_tls(raw, conn, self._tls(), server_hostname=pool.host)
                    except BaseException:
                        raw.abort()
                        raise
                    if tls is None:
                        raise ConnectFailed(f"no TLS through {proxy.what} to {pool.what}")
                    conn.transport = tls
                elif proxy is not None:
                    await loop.create_connection(lambda: conn, proxy.host, proxy.port)
                else:
                    await loop.create_connection(lambda: conn, pool.host, pool.port,
                                                 ssl=self._tls() if pool.tls else None,
                                                 server_hostname=pool.host if pool.tls else None)
        except TimeoutError:
            raise TimedOut(phase, f"connecting to {pool.what} took too long") from None
        except ssl.SSLCertVerificationError as e:
            raise ConnectFailed(f"the TLS certificate of {pool.what} was refused: {e.verify_message}") from None
        except ssl.SSLError as e:
            raise ConnectFailed(f"the TLS handshake with {pool.what} failed: {e.reason or e}") from None
        except OSError as e:
            raise ConnectFailed(f"cannot connect to {pool.what}: {e.strerror or type(e).__name__}",
                                errno=e.errno) from None
        if self._closed:
            conn.transport.abort()
            raise ConnectFailed("the upstream client is closed")
        return conn

    def _tls(self) -> ssl.SSLContext:
        ctx = self._ssl
        if ctx is None:
            ctx = ssl.create_default_context(cafile=self._ca_file)
            ctx.set_alpn_protocols(["http/1.1"])
            self._ssl = ctx
        return ctx

    async def _upload(self, conn: Connection, resp: Response, chunks: AsyncIterable[bytes],
                      length: int | None) -> None:
        """Stream the request body; stop early if the upstream answers (or fails) before taking it all."""
        transport = conn.transport
        sent = 0
        it = aiter(chunks)
        try:
            async for data in it:
                if resp.status or resp._exc is not None:
                    break
                n = len(data)
                if not n:
                    continue
                sent += n
                if length is None:
                    transport.write(chunk(data))
                elif sent > length:
                    raise ProtocolError(f"the request body is longer than its content-length ({length})")
                else:
                    transport.write(data)
                while conn.write_paused and not resp.status and resp._exc is None:
                    await resp._wait("write")
            else:
                if length is None:
                    transport.write(LAST_CHUNK)
                elif sent != length:
                    raise ProtocolError(f"the request body is shorter than its content-length ({length})")
                resp._sent_all = True
                return
        except BaseException:
            resp.close()
            raise
        finally:
            aclose = getattr(it, "aclose", None)
            if not resp._sent_all and aclose is not None:
                await aclose()
        conn.keep = False  # the upstream answered mid-body: the rest of the body is never sent
