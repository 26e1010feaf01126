"""A loopback TCP proxy that tests can cut and restore: "the database is down" without touching the server.

Besides ``cut`` (drop every connection, refuse new ones), ``black_hole`` keeps accepting connections and
relays nothing either way: a server that hangs, or a silent network. ``restore`` lets the held bytes through,
as a healed partition does, except those of connections their sender closed meanwhile (decided when ``restore``
is called, from the sockets themselves: a close that happened before it is never raced by the proxy's thread).
``reset_all`` resets every connection (RST) as soon as it is made.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
from collections.abc import Callable

from relaygate.testing.base import free_port


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target``; ``cut()`` drops every connection and refuses new ones."""

    def __init__(self, target_host: str, target_port: int, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self.up = True
        self.resetting = False
        self.accepted = 0  # connections accepted (how often a client tried to connect)
        self._loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()  # cleared while black-holed: bytes are held, not relayed
        self._flowing.set()
        self._conns: set[asyncio.StreamWriter] = set()
        self._held: dict[asyncio.StreamReader, asyncio.StreamWriter] = {}  # pipes holding bytes: reader -> its sender
        self._gone: set[asyncio.StreamReader] = set()  # held pipes whose sender had closed when restored
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"tcpproxy:{self.port}", daemon=True)

    def start(self) -> TcpProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:  # stopped: a cancelled handler would be logged as an error
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if not self.up:
            writer.close()
            return
        if self.resetting:
            _reset(writer)
            return
        self._conns.add(writer)
        await self._flowing.wait()  # black-holed: accepted, and silent until restored
        if not self.up or writer.is_closing():
            return
        try:
            ur, uw = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._conns.update((writer, uw))

        async def pipe(r: asyncio.StreamReader, src: asyncio.StreamWriter, w: asyncio.StreamWriter) -> None:
            try:
                while self.up:
                    data = await r.read(65536)
                    if not data:
                        break
                    if not self._flowing.is_set():
                        self._held[r] = src
                        try:
                            await self._flowing.wait()
                        finally:
                            self._held.pop(r, None)
                        if r in self._gone:
                            self._gone.discard(r)
                            break  # the sender gave up meanwhile: as in a partition, its bytes never arrive
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                w.close()
                self._conns.discard(w)

        await asyncio.gather(pipe(reader, writer, uw), pipe(ur, uw, writer))

    def cut(self) -> None:
        """Close every proxied connection now and refuse new ones until ``restore``."""
        def do() -> None:
            self.up = False
            for w in list(self._conns):
                w.transport.abort()
            self._conns.clear()
        self._loop.call_soon_threadsafe(do)

    def black_hole(self) -> None:
        """Keep accepting connections but relay nothing either way until ``restore`` (held, not dropped)."""
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def reset_all(self) -> None:
        """Reset every proxied connection now, and every new one as soon as it is accepted, until ``restore``."""
        def do() -> None:
            self.resetting = True
            for w in list(self._conns):
                _reset(w)
            self._conns.clear()
        self._loop.call_soon_threadsafe(do)

    def restore(self) -> None:
        """Accept and relay again; held bytes go on, but for connections whose sender has closed by now."""
        def do() -> None:
            for r, src in list(self._held.items()):
                if r.at_eof() or r.exception() is not None or src.is_closing() or _peer_closed(src):
                    self._gone.add(r)
            self.up = True
            self.resetting = False
            self._flowing.set()
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(_call(do), self._loop).result(5)
        else:
            do()

    def stop(self) -> None:
        self.cut()

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _call(fn: Callable[[], None]) -> None:
    fn()


def _peer_closed(writer: asyncio.StreamWriter) -> bool:
    """Whether the peer of this connection has closed it (a FIN or a reset waiting in the socket), looked at
    now, before the event loop has read it."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return True
    dup = socket.socket(fileno=os.dup(sock.fileno()))
    try:
        return dup.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False  # open, with nothing to read
    except OSError:
        return True  # reset
    finally:
        dup.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (RST), not an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
