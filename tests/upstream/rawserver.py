"""A loopback HTTP/1.1 server that misbehaves on purpose: each test scripts what every connection does."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import uvloop


class Peer:
    """The server's side of one connection: read requests as the client framed them, write raw bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: RawServer) -> None:
        self.reader = reader
        self.writer = writer
        self.server = server

    async def request(self) -> tuple[str, dict[str, str], bytes] | None:
        """(request line, headers with lower-case names, body de-framed), or None at a clean EOF."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                assert k.lower() not in headers, f"header {k} sent twice"
                headers[k.lower()] = v.strip()
        if headers.get("transfer-encoding") == "chunked":
            assert "content-length" not in headers
            body = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n"))[:-2], 16)
                data = await self.reader.readexactly(size + 2)
                assert data[-2:] == b"\r\n"
                if size == 0:
                    break
                body += data[:-2]
        else:
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        self.server.requests.append((lines[0], headers, body))
        return lines[0], headers, body

    async def send(self, data: bytes, *, pause: float = 0.0) -> None:
        self.writer.write(data)
        await self.writer.drain()
        if pause:
            await asyncio.sleep(pause)

    def reset(self) -> None:
        """Close with an RST (SO_LINGER 0) instead of a FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    def close(self) -> None:
        self.writer.close()


Script = Callable[[Peer], Awaitable[None]]


class Tally:
    """Requests being answered at once, across every server that shares it."""

    def __init__(self) -> None:
        self.busy = 0
        self.max_busy = 0

    def begin(self) -> None:
        self.busy += 1
        self.max_busy = max(self.max_busy, self.busy)

    def end(self) -> None:
        self.busy -= 1


class RawServer:
    """Runs ``script(peer)`` for every accepted connection; counts connections and records requests."""

    def __init__(
            self, script: Script, *, tls: ssl.SSLContext | None = None, tally: Tally | None = None) -> None:
        self.script = script
        self.tls = tls
        self.tally = tally or Tally()
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.connections = 0
        self.open = 0
        self.max_open = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def url(self, path: str = "/v1/chat/completions", host: str = "127.0.0.1") -> str:
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{path}"

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls, backlog=2048)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._server is not None
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            await self.script(Peer(reader, writer, self))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # the server is shutting down (a cancelled task here would be logged by asyncio.streams)
        finally:
            self.open -= 1
            writer.close()
            self._tasks.discard(task)


def respond(status: int = 200, body: bytes = b"{}", headers: str = "") -> bytes:
    return (f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{headers}"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


def serve_forever(response: bytes | Callable[[tuple[str, dict[str, str], bytes]], bytes],
                  delay: float = 0.0) -> Script:
    """Answer every request on the connection with ``response`` (after ``delay`` seconds)."""
    async def script(peer: Peer) -> None:
        while (req := await peer.request()) is not None:
            peer.server.tally.begin()
            try:
                if delay:
                    await asyncio.sleep(delay)
                await peer.send(response(req) if callable(response) else response)
            finally:
                peer.server.tally.end()
    return script


LOOPS = ("asyncio", "uvloop")


def run(kind: str, test: Callable[[], Coroutine[Any, Any, Any]], timeout: float = 20.0) -> Any:
    """Run ``test()`` on a fresh loop of ``kind``, failing it if it takes longer than ``timeout``."""
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await test()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop if kind == "uvloop" else None) as runner:
        return runner.run(bounded())
