"""Bodies streamed both ways: uploads as they come, answers as they arrive, with backpressure."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from relaygate.upstream import Client, ConnectionClosed, ProtocolError, TimedOut, Timeouts
from tests.upstream.rawserver import Peer, RawServer, respond, serve_forever

Arun = Callable[..., Any]


def test_a_streamed_answer_arrives_chunk_by_chunk_as_sent(arun: Arun) -> None:
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for i in range(5):
            event = b"data: %d\n\n" % i
            await peer.send(b"%x\r\n%s\r\n" % (len(event), event), pause=0.05)
        await peer.send(b"0\r\n\r\n")

    async def test() -> None:
        async with RawServer(script) as srv, Client() as client:
            resp = await client.request("POST", srv.url(), data=b"{}")
            got: list[tuple[bytes, float]] = []
            async for chunk in resp:
                got.append((chunk, time.monotonic()))
            assert [c for c, _ in got] == [b"data: %d\n\n" % i for i in range(5)]
            assert got[-1][1] - got[0][1] > 0.15  # each event came when it was sent, not at the end
    arun(test)


def test_a_slow_consumer_pauses_reading_so_the_upstream_waits(arun: Arun) -> None:
    size = 48 * 1024 * 1024
    progress = {"sent": 0}

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        block = b"a" * 65536
        for _ in range(size // len(block)):
            await peer.send(block)
            progress["sent"] += len(block)

    async def test() -> None:
        async with RawServer(script) as srv, Client() as client:
            resp = await client.request("GET", srv.url())
            first = await resp.__anext__()
            await asyncio.sleep(0.5)  # the consumer lags
            assert progress["sent"] < size // 2  # the server is held back, not buffered in our memory
            total = len(first)
            async for chunk in resp:
                total += len(chunk)
            assert total == size
    arun(test, timeout=60)


def test_an_upload_streams_as_it_is_produced(arun: Arun) -> None:
    arrivals: list[float] = []

    async def script(peer: Peer) -> None:
        await peer.reader.readuntil(b"\r\n\r\n")
        while (line := await peer.reader.readuntil(b"\r\n")) != b"0\r\n":
            await peer.reader.readexactly(int(line[:-2], 16) + 2)
            arrivals.append(time.monotonic())
        await peer.reader.readuntil(b"\r\n")
        await peer.send(respond(body=b"done"))

    async def produce() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"x" * 1000
            await asyncio.sleep(0.05)

    async def test() -> None:
        async with RawServer(script) as srv, Client() as client:
            resp = await client.request("POST", srv.url("/v1/audio/transcriptions"), data=produce())
            assert await resp.read() == b"done"
            assert len(arrivals) == 4 and arrivals[-1] - arrivals[0] > 0.1
    arun(test)


def test_a_large_upload_with_its_length_known_is_sent_whole(arun: Arun) -> None:
    async def produce() -> AsyncIterator[bytes]:
        for i in range(100):
            yield bytes([i]) * 100_000

    async def test() -> None:
        async with RawServer(serve_forever(respond())) as srv, Client() as client:
            resp = await client.request("POST", srv.url(), data=produce(), headers={"content-length": "10000000"})
            assert resp.status == 200
            assert srv.requests[0][2] == b"".join(bytes([i]) * 100_000 for i in range(100))
            await client.request("POST", srv.url(), data=b"z" * 300_000)  # a large bytes body, written apart
            assert srv.requests[1][2] == b"z" * 300_000
    arun(test)


@pytest.mark.parametrize("declared,parts", [("5", [b"abc"]), ("2", [b"abc"])], ids=["short", "long"])
def test_an_upload_that_breaks_its_content_length_is_a_protocol_error(arun: Arun, declared: str,
                                                                       parts: list[bytes]) -> None:
    async def produce() -> AsyncIterator[bytes]:
        for p in parts:
            yield p

    async def test() -> None:
        async with RawServer(serve_forever(respond())) as srv, Client() as client:
            with pytest.raises(ProtocolError, match="content-length"):
                await client.request("POST", srv.url(), data=produce(), headers={"content-length": declared})
    arun(test)


def test_a_failing_upload_source_raises_its_own_error_and_drops_the_connection(arun: Arun) -> None:
    class ClientWentAway(Exception):
        pass

    async def produce() -> AsyncIterator[bytes]:
        yield b"part"
        raise ClientWentAway

    async def script(peer: Peer) -> None:
        await peer.reader.readuntil(b"\r\n\r\n")
        rest = await peer.reader.read()  # until the client drops the connection
        peer.server.requests.append(("partial", {}, rest))

    async def test() -> None:
        async with RawServer(script) as srv, Client() as client:
            with pytest.raises(ClientWentAway):
                await client.request("POST", srv.url(), data=produce())
            await asyncio.sleep(0.05)
            assert srv.requests == [("partial", {}, b"4\r\npart\r\n")]  # no last chunk: never a whole request
    arun(test)


def test_an_answer_before_the_upload_ends_stops_the_upload(arun: Arun) -> None:
    produced = {"n": 0, "closed": False}

    async def produce() -> AsyncIterator[bytes]:
        try:
            for _ in range(1000):
                produced["n"] += 1
                yield b"y" * 10_000
                await asyncio.sleep(0.001)
        finally:
            produced["closed"] = True

    async def script(peer: Peer) -> None:
        await peer.reader.readuntil(b"\r\n\r\n")
        await peer.send(respond(413, b'{"error":"too large"}', "connection: close\r\n"))
        await asyncio.sleep(0.5)

    async def test() -> None:
        async with RawServer(script) as srv, Client() as client:
            resp = await client.request("POST", srv.url(), data=produce())
            assert resp.status == 413 and await resp.read() == b'{"error":"too large"}'
            assert produced["n"] < 1000 and produced["closed"]
    arun(test)


def test_an_upstream_that_stops_reading_an_upload_times_out_in_the_write_phase(arun: Arun) -> None:
    async def produce() -> AsyncIterator[bytes]:
        while True:
            yield b"w" * 1_000_000

    async def script(peer: Peer) -> None:
        await asyncio.sleep(10)  # reads nothing

    async def test() -> None:
        async with RawServer(script) as srv, Client(timeouts=Timeouts(read=0.3)) as client:
            with pytest.raises(TimedOut) as e:
                await client.request("POST", srv.url(), data=produce())
            assert e.value.phase == "write"
    arun(test)


def test_closing_a_stream_midway_drops_the_connection(arun: Arun) -> None:
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        try:
            rest = await asyncio.wait_for(peer.reader.read(), 2)
        except TimeoutError:
            rest = b"timeout"
        peer.server.requests.append(("eof", {}, rest))

    async def test() -> None:
        async with RawServer(script) as srv, Client() as client:
            resp = await client.request("GET", srv.url())
            assert await resp.__anext__() == b"first"
            resp.release()  # the client of the gateway went away
            with pytest.raises(ConnectionClosed):
                await resp.__anext__()
            await asyncio.sleep(0.1)
            assert srv.requests[-1] == ("eof", {}, b"")  # the upstream saw the close at once
    arun(test)


def _stream_then_end(after: float) -> Callable[[Peer], Any]:
    """A chunked stream of one event; the body's end comes ``after`` seconds later; then the next request on
    the same connection is answered too."""
    async def script(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nlast\r\n")
            await asyncio.sleep(after)
            await peer.send(b"0\r\n\r\n")
    return script


def test_a_left_stream_is_pooled_once_its_body_ends(arun: Arun) -> None:
    async def test() -> None:
        async with RawServer(_stream_then_end(0.2)) as srv, Client() as client:
            resp = await client.request("GET", srv.url())
            assert await resp.__anext__() == b"last"
            resp.leave(5.0)  # the reader has its last event and reads no more
            resp.release()  # leaving never closes the connection
            await asyncio.sleep(0.4)
            again = await client.request("GET", srv.url())
            assert await again.read() == b"last"
            assert srv.connections == 1  # the left connection was pooled when its body ended, and reused
    arun(test)


def test_a_left_stream_whose_body_does_not_end_in_time_is_closed(arun: Arun) -> None:
    async def test() -> None:
        async with RawServer(_stream_then_end(3.0)) as srv, Client() as client:
            resp = await client.request("GET", srv.url())
            assert await resp.__anext__() == b"last"
            resp.leave(0.2)
            await asyncio.sleep(0.5)
            again = await client.request("GET", srv.url())  # the first connection was closed: a new one
            assert srv.connections == 2
            again.close()
    arun(test)
