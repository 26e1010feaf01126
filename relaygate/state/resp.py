"""A small pipelined Redis client for the limit scripts: one connection, replies matched to calls in order.

redis-py's asyncio client spends ~100 µs of CPU per command on pool checkout, retries and parsing; the
limits run two commands per call, so on the hot path that would cost more than the call itself. Here a
command is one write to the socket and one future resolved by ``data_received``.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import Any
from urllib.parse import unquote, urlsplit


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


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiters: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.lost = False
        self.out: list[bytes] = []  # commands of this loop iteration, written together by flush
        self.progress_at = 0.0  # when a reply last came (or the first command went out after a quiet spell)

    def flush(self) -> None:
        data, self.out = b"".join(self.out), []
        if self.transport is not None and not self.lost:
            self.transport.write(data)

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
        self.lost = True
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(ConnectionError("the Redis connection was lost"))


class RespClient:
    """``redis://[user:password@]host[:port][/db]``, ``rediss://…`` (TLS) or ``unix:///path?db=N``."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = urlsplit(url)
        self.timeout = timeout
        self._proto: _Protocol | None = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        u = self.url
        proto = _Protocol()
        if u.scheme == "unix":
            await asyncio.wait_for(loop.create_unix_connection(lambda: proto, u.path), self.timeout)
        else:
            ctx = ssl.create_default_context() if u.scheme == "rediss" else None
            await asyncio.wait_for(loop.create_connection(lambda: proto, u.hostname or "127.0.0.1", u.port or 6379,
                                                          ssl=ctx), self.timeout)
        self._proto = proto
        loop.call_later(1.0, self._watch, proto)
        if u.password:
            auth = (unquote(u.username), unquote(u.password)) if u.username else (unquote(u.password),)
            await self.call("AUTH", *auth)
        db = u.path.lstrip("/") if u.scheme != "unix" else dict(
            p.split("=", 1) for p in u.query.split("&") if "=" in p).get("db", "")
        if db and db != "0":
            await self.call("SELECT", db)
        return proto

    async def _ready(self) -> _Protocol:
        proto = self._proto
        if proto is not None and not proto.lost:
            return proto
        async with self._lock:
            proto = self._proto
            if proto is None or proto.lost:
                proto = await self._connect()
            return proto

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
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if not proto.waiters:
            proto.progress_at = loop.time()
        proto.waiters.append(fut)
        if not proto.out:  # one socket write per loop iteration, however many calls sent commands in it
            loop.call_soon(proto.flush)
        proto.out.append(command)
        return fut

    async def call(self, *args: Any) -> Any:
        proto = self._proto if self._proto is not None and not self._proto.lost else await self._ready()
        return await self.send(proto, *args)

    def _watch(self, proto: _Protocol) -> None:
        """Once a second: a connection with calls waiting and no reply for ``timeout`` s is cut, which fails
        those calls (one timer per connection instead of one per call)."""
        if proto.lost:
            return
        loop = asyncio.get_running_loop()
        if proto.waiters and loop.time() - proto.progress_at > self.timeout and proto.transport is not None:
            proto.transport.abort()
            return
        loop.call_later(1.0, self._watch, proto)

    async def close(self) -> None:
        proto = self._proto
        self._proto = None
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
