"""A small pipelined Redis client for the limit scripts: one connection, replies matched to calls in order.

redis-py's asyncio client spends ~100 µs of CPU per command on pool checkout, retries and parsing; the
limits run two commands per call, so on the hot path that would cost more than the call itself. Here a
command is one write to the socket and one future resolved by ``data_received``.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from relaygate.state.outage import Outage


class RespError(Exception):
    """An error reply from Redis (``-ERR …``)."""


def encode(args: tuple[Any, ...]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    texts = [a if isinstance(a, str) else str(a) for a in args if not isinstance(a, bytes)]
    if len(texts) == len(args) and all(t.isascii() for t in texts):  # the usual case: one join, one encode
        return "".join([f"*{len(texts)}\r\n", *(f"${len(t)}\r\n{t}\r\n" for t in texts)]).encode()
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def bulk(word: str) -> bytes:
    """One bulk string, its length counted in bytes (a team id may be any Unicode text)."""
    b = word.encode()
    return b"$%d\r\n%s\r\n" % (len(b), b)


def bulk_ascii(words: list[str]) -> bytes:
    """Bulk strings of ASCII words (numbers, the limit scripts' settlement entries): one join, one encode."""
    return "".join([f"${len(w)}\r\n{w}\r\n" for w in words]).encode()


def parse(buf: bytearray, pos: int = 0) -> tuple[Any, int] | None:
    """One RESP2 value from ``buf`` at ``pos``: (value, end) or None when incomplete."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    kind, line = buf[pos:pos + 1], bytes(buf[pos + 1:end])
    nxt = end + 2
    if kind == b":":
        return int(line), nxt
    if kind == b"+":
        return line, nxt
    if kind == b"-":
        return RespError(line.decode("utf-8", "replace")), nxt
    if kind == b"$":
        n = int(line)
        if n < 0:
            return None, nxt
        if len(buf) < nxt + n + 2:
            return None
        return bytes(buf[nxt:nxt + n]), nxt + n + 2
    if kind == b"*":
        n = int(line)
        if n < 0:
            return None, nxt
        items = []
        for _ in range(n):
            r = parse(buf, nxt)
            if r is None:
                return None
            items.append(r[0])
            nxt = r[1]
        return items, nxt
    raise RespError(f"unexpected reply type {kind!r}")


class RedisUnavailable(ConnectionError):
    """Redis is down, did not answer in time, or is marked down: the caller falls back at once."""


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout: float = 5.0, on_failure: Callable[[BaseException], None] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiters: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.lost = False
        self.out: list[bytes] = []  # commands of this loop iteration, written together by flush
        self.timeout = timeout  # seconds a command may wait for its reply
        self.on_failure = on_failure
        self.progress_at = 0.0  # when a reply last came (or the first command went out after a quiet spell)
        self.armed = False  # a reply check is scheduled
        self.graced = False  # the check already gave a late reply one more loop turn

    def flush(self) -> None:
        out, self.out = self.out, []
        if self.transport is None or self.lost:
            return
        if len(self.waiters) <= len(out):  # no older command is waiting: time these replies from now
            self.progress_at = self.loop.time()
        if not self.armed:
            self.armed = True
            self.loop.call_at(self.progress_at + self.timeout, self.check)
        self.transport.write(b"".join(out))

    def check(self) -> None:
        """Fail every waiting call when no reply came for ``timeout`` s: one timer per connection (re-armed
        while replies keep coming), not one per call."""
        self.armed = False
        if self.lost or not self.waiters:
            return
        now = self.loop.time()
        if now - self.progress_at < self.timeout:
            self.armed = True
            self.graced = False
            self.loop.call_at(self.progress_at + self.timeout, self.check)
            return
        if not self.graced:  # uvloop runs timers before reading sockets: after a stalled loop turn the
            self.graced = self.armed = True  # reply may be waiting unread; look once more after a read
            self.loop.call_later(0.001, self.check)
            return
        self.fail(RedisUnavailable(f"Redis did not answer within {self.timeout * 1000:.0f} ms"))

    def fail(self, error: BaseException) -> None:
        """Give up on this connection: its calls fail now, the client marks Redis down."""
        if self.lost:
            return
        self.lost = True
        self._fail_waiters(error)
        if self.on_failure is not None:
            self.on_failure(error)
        if self.transport is not None:
            self.transport.abort()

    def _fail_waiters(self, error: BaseException) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(error)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.progress_at = self.loop.time()
        if self.buf or not data.endswith(b"\r\n"):
            self.buf += data
            self._parse_buffered()
            return
        # the usual case: whole replies of one line each (status, integer, error), as the limit scripts send
        waiters = self.waiters
        pos = 0
        for line in data.split(b"\r\n")[:-1]:
            kind = line[:1]
            value: Any
            if kind == b"+":
                value = line[1:]
            elif kind == b":":
                value = int(line[1:])
            elif kind == b"-":
                value = RespError(line[1:].decode("utf-8", "replace"))
            else:  # a bulk string or an array: the general parser takes it from here
                self.buf += data[pos:]
                self._parse_buffered()
                return
            pos += len(line) + 2
            if not waiters:
                continue
            fut = waiters.popleft()
            if fut.done():
                continue
            if kind == b"-":
                fut.set_exception(value)
            else:
                fut.set_result(value)

    def _parse_buffered(self) -> None:
        pos = 0
        while self.waiters:
            r = parse(self.buf, pos)
            if r is None:
                break
            value, pos = r
            fut = self.waiters.popleft()
            if fut.done():
                continue
            if isinstance(value, RespError):
                fut.set_exception(value)
            else:
                fut.set_result(value)
        if pos:
            del self.buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost:  # we gave up on it ourselves (``fail``)
            return
        self.lost = True
        error = RedisUnavailable(f"the Redis connection was lost ({type(exc).__name__ if exc else 'closed'})")
        if (exc is not None or self.waiters) and self.on_failure is not None:
            self.on_failure(error)  # a reset, or calls cut off: Redis is in trouble (a plain close is not)
        self._fail_waiters(error)


class RespClient:
    """``redis://[user:password@]host[:port][/db]``, ``rediss://…`` (TLS) or ``unix:///path?db=N``.

    One timeout policy for every user: a reply (or, when there is no connection yet, the connection) is
    waited for ``timeout`` seconds at most; past that the connection is dropped and Redis is marked down
    (``outage``): calls then fail at once with ``RedisUnavailable``, and a probe in the background (one at
    a time, with backoff up to ``retry`` s) reconnects. ``on_up`` callbacks run when it answers again."""

    def __init__(self, url: str, timeout: float = 0.05, retry: float = 1.0, connect_timeout: float = 2.0) -> None:
        self.url = urlsplit(url)
        self.timeout = timeout
        self.connect_timeout = max(connect_timeout, timeout)
        self.outage = Outage("Redis", longest=retry)
        self.on_up: list[Callable[[], None]] = []
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    @property
    def down(self) -> bool:
        return self.outage.down

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        u = self.url
        proto = _Protocol(self.timeout)  # reports failures to the outage once the handshake is done
        try:
            if u.scheme == "unix":
                await asyncio.wait_for(loop.create_unix_connection(lambda: proto, u.path), self.connect_timeout)
            else:
                ctx = ssl.create_default_context() if u.scheme == "rediss" else None
                await asyncio.wait_for(loop.create_connection(lambda: proto, u.hostname or "127.0.0.1",
                                                              u.port or 6379, ssl=ctx), self.connect_timeout)
            if u.password:
                auth = (unquote(u.username), unquote(u.password)) if u.username else (unquote(u.password),)
                await self.send(proto, "AUTH", *auth)
            db = u.path.lstrip("/") if u.scheme != "unix" else dict(
                p.split("=", 1) for p in u.query.split("&") if "=" in p).get("db", "")
            if db and db != "0":
                await self.send(proto, "SELECT", db)
            await self.send(proto, "PING")  # a server that accepts but never answers fails here, not in a call
        except (OSError, TimeoutError, RespError) as e:
            proto.lost = True
            if proto.transport is not None:
                proto.transport.abort()
            self.outage.failed(e)
            if isinstance(e, RespError):
                raise
            raise RedisUnavailable(f"cannot connect to Redis ({type(e).__name__}: {e})") from None
        proto.on_failure = self._failed
        self._proto = proto
        if self.outage.down:
            self.outage.recovered()
            for cb in self.on_up:
                cb()
        return proto

    async def start(self) -> None:
        """Connect now, so that the first calls do not wait for it (a Redis down at start is only logged:
        calls fall back until the probe finds it)."""
        try:
            await asyncio.wait_for(asyncio.shield(self._connect_shared()), self.connect_timeout)
        except (OSError, TimeoutError, RespError) as e:
            if not self.outage.down:
                self.outage.failed(e)

    def _failed(self, error: BaseException) -> None:
        self.outage.failed(error)

    def _connect_shared(self) -> asyncio.Future[_Protocol]:
        fut = self._connecting
        if fut is None:
            fut = self._connecting = asyncio.ensure_future(self._connect())
            fut.add_done_callback(self._connected)
        return fut

    def _connected(self, fut: asyncio.Future[_Protocol]) -> None:
        self._connecting = None
        if not fut.cancelled():
            fut.exception()  # retrieved: a connect nobody waits for any more must not warn

    async def ready(self) -> _Protocol:
        """The live connection; else a connection made within ``timeout``; else ``RedisUnavailable`` (at once
        while Redis is marked down: a background probe asks it again when the backoff allows)."""
        proto = self._proto
        if proto is not None and not proto.lost:
            return proto
        if self.outage.down:
            if self._connecting is None and self.outage.may_probe():
                self._connect_shared()
            raise RedisUnavailable(f"Redis is down (next try in {self.outage.retry_in():.1f} s)")
        try:
            return await asyncio.wait_for(asyncio.shield(self._connect_shared()), self.timeout)
        except TimeoutError:
            raise RedisUnavailable(f"no Redis connection within {self.timeout * 1000:.0f} ms") from None

    def connected(self) -> _Protocol | None:
        """The live connection, if there is one (no connecting here)."""
        proto = self._proto
        return proto if proto is not None and not proto.lost else None

    def send(self, proto: _Protocol, *args: Any) -> asyncio.Future[Any]:
        """Write one command in this loop iteration (one socket write for all of them); the future resolves
        with its reply."""
        return self.send_raw(proto, encode(args))

    def send_raw(self, proto: _Protocol, command: bytes) -> asyncio.Future[Any]:
        """Like ``send`` for a command already encoded."""
        loop = proto.loop
        fut: asyncio.Future[Any] = loop.create_future()
        if proto.lost:
            fut.set_exception(RedisUnavailable("the Redis connection was lost"))
            return fut
        proto.waiters.append(fut)
        if not proto.out:  # one socket write per loop iteration, however many calls sent commands in it
            loop.call_soon(proto.flush)
        proto.out.append(command)
        return fut

    async def call(self, *args: Any) -> Any:
        proto = self._proto
        if proto is None or proto.lost:
            proto = await self.ready()
        return await self.send(proto, *args)

    async def close(self) -> None:
        proto = self._proto
        self._proto = None
        if self._connecting is not None:
            self._connecting.cancel()
        if proto is not None and proto.transport is not None:
            proto.transport.close()


class Script:
    """A Lua script run by EVALSHA, loaded on first use (and again after Redis forgot it)."""

    def __init__(self, client: RespClient, source: str) -> None:
        import hashlib

        self.client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self.client.call("EVALSHA", self.sha, len(keys), *keys, *args)
        except RespError as e:
            if not str(e).startswith("NOSCRIPT"):
                raise
            return await self.client.call("EVAL", self.source, len(keys), *keys, *args)
